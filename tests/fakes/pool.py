"""An in-thread :class:`~coordinator.core.ports.WorkerPool` for fast runner tests.

Tasks run in the calling thread, one per :meth:`InThreadPool.completed` call, in submission
order, through a plain callable ``execute(job, slice_, token) -> SliceResult`` (no import
path, no worker process). Errors are classified exactly as the process pool's workers do
(:func:`coordinator.run.pool.outcome_of_error`). ``die`` names ``(slice_id, attempt)`` pairs
whose worker "dies" (the outcome a killed process produces) instead of running the task;
``hold`` names slice ids whose tasks never finish (a slow worker), until shutdown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from coordinator.core.ports import SliceOutcome, SliceResult, SliceTask
from coordinator.core.values import CommitToken, Slice
from coordinator.run.pool import outcome_of_error

Execute = Callable[[Any, Slice, CommitToken], SliceResult]


@dataclass
class InThreadPool:
    """Runs each submitted task when :meth:`completed` is called (see the module doc)."""

    execute: Execute
    capacity: int = 2
    die: set[tuple[str, int]] = field(default_factory=set)
    hold: set[str] = field(default_factory=set)
    submitted: list[SliceTask] = field(default_factory=list)
    deaths: int = 0
    shut_down: str | None = None  # "wait" or "terminate" once shutdown was called
    _queue: list[SliceTask] = field(default_factory=list)

    def submit(self, task: SliceTask) -> None:
        """Queue ``task``; refuses more than :attr:`capacity` in flight, like a real pool."""
        if self.shut_down is not None:
            raise RuntimeError("submit after shutdown")
        if len(self._queue) >= self.capacity:
            raise ValueError(f"expected at most {self.capacity} in flight, found more")
        self.submitted.append(task)
        self._queue.append(task)

    def completed(self, timeout_s: float) -> list[SliceOutcome]:
        """Run the oldest queued task not held now and return its outcome."""
        task = next((t for t in self._queue if t.slice_.slice_id not in self.hold), None)
        if task is None:
            return []
        self._queue.remove(task)
        sid = task.slice_.slice_id
        if (sid, task.token.attempt) in self.die:
            self.deaths += 1
            return [SliceOutcome(sid, error="worker process died", worker_died=True)]
        try:
            return [SliceOutcome(sid, result=self.execute(task.job, task.slice_, task.token))]
        except Exception as exc:
            return [outcome_of_error(sid, exc)]

    def in_flight(self) -> int:
        """Tasks queued and not yet run."""
        return len(self._queue)

    def shutdown(self, *, terminate: bool = False) -> None:
        """Forget queued tasks (as killed workers would) and refuse new ones."""
        self.shut_down = "terminate" if terminate else "wait"
        if terminate:
            self._queue.clear()


def attempts_of(pool: InThreadPool, slice_ids: Iterable[str] | None = None) -> dict[str, int]:
    """How many times each slice was submitted."""
    out: dict[str, int] = {}
    for task in pool.submitted:
        sid = task.slice_.slice_id
        if slice_ids is None or sid in slice_ids:
            out[sid] = out.get(sid, 0) + 1
    return out
