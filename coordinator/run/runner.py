"""The runner: executes a stored plan's slices through a worker pool, resumably.

* Bounded concurrency through a :class:`~coordinator.core.ports.WorkerPool` (by default a
  :class:`~coordinator.run.pool.ProcessWorkerPool`: warm (``forkserver``) processes that die with
  this coordinator). The executor is a ``module:function`` import path (a
  :class:`coordinator.core.ports.SliceExecutor`), imported inside each worker.
* Every transition goes through the state store with the run's epoch: a stale coordinator
  stops at its next transition (:class:`StaleEpochError`).
* Slices left ``running`` by a dead coordinator are run again: executors are idempotent by
  commit token. Failed slices are retried under one
  :class:`~coordinator.core.retry.RetryPolicy` (``max_attempts`` attempts per run,
  exponential backoff with equal jitter) when the error is retriable
  (:func:`~coordinator.core.retry.is_retriable`: the errors' ``transient`` flag; a worker
  that died is always retriable). Configuration, data-loss, duplicate-key and stale-epoch
  errors are not retried.
* ``stop`` (set by SIGINT/SIGTERM in the CLI) stops submitting; in-flight slices finish and
  are recorded. ``abandon`` (a second signal) stops waiting: the workers are killed, their
  slices stay ``running`` and are re-run on resume.
* With a :class:`~coordinator.run.committer.BatchCommitter` (``[backfill] committer =
  "coordinator"``) staged slices are committed by it, several per table commit: batches left
  by a killed coordinator are recovered before the run, due batches are committed between
  outcomes, and the rest at the end (a cancelled run too; an abandoned one leaves them staged).
* ``lag_gate()`` is consulted before each submission; a number is seconds to pause (recorded
  in the state store's pauses), ``None`` means go.
* A partial run (``RunnerConfig.only`` globs over slice ids, ``RunnerConfig.limit`` slices at
  most, in plan order) runs a subset of the slices still to do without changing the stored
  plan; the slices it leaves out are reported as ``RunReport.not_selected`` and the run is
  PARTIAL while any slice remains.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from coordinator.core.errors import ConfigError, ExitCode
from coordinator.core.ports import SliceOutcome, SliceResult, SliceTask, WorkerPool
from coordinator.core.retry import Jitter, RetryPolicy
from coordinator.core.values import CommitToken, Epoch, Slice, SliceStatus
from coordinator.run.committer import BatchCommitter
from coordinator.run.progress import NullProgress, ProgressSink
from coordinator.run.queue import TODO, SliceQueue, select_slices
from coordinator.state.store import LeaseOwner, SliceRecord

log = logging.getLogger(__name__)

LagGate = Callable[[], float | None]
Outcome = SliceOutcome  # the name this module used before the WorkerPool port


@dataclass(frozen=True)
class RunnerConfig:
    """How slices are executed."""

    executor: str  # "module:function"
    concurrency: int = 2
    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    mp_context: str | None = None  # the pool's default: forkserver (warm) where available
    jitter: Jitter = "equal"
    takeover: bool = False  # steal the job's lease even if its holder looks alive
    lease_ttl_s: float = 30.0  # the lease expires this long after the last heartbeat
    only: tuple[str, ...] = ()  # slice-id globs of a partial run (empty: every slice)
    limit: int | None = None  # run at most this many slices (plan order)
    pool: str = "process"  # where slices run: "process" (local workers) or "ray"
    ray_address: str | None = None  # the Ray cluster (None: a local Ray for the run)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"expected concurrency >= 1, found concurrency={self.concurrency}")
        if self.pool not in ("process", "ray"):
            raise ConfigError(f"expected backfill.executor process or ray, found {self.pool!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"expected --limit >= 1, found limit={self.limit}")
        _ = self.retry  # building the policy validates the retry settings up front

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of a slice: ``max_attempts`` attempts, backoff between them."""
        return RetryPolicy(self.max_attempts, self.backoff_base_s, self.backoff_max_s, self.jitter)


class SliceLedger(Protocol):
    """The part of the state store the runner writes slice transitions to."""

    def iter_slices(
        self,
        job_id: str,
        epoch: int | None = None,
        *,
        statuses: Sequence[SliceStatus] | None = None,
        page_size: int = ...,
    ) -> Iterator[SliceRecord]: ...

    def slice_counts(self, job_id: str, epoch: int | None = None) -> dict[str, int]: ...

    def mark_running(self, job_id: str, slice_id: str, epoch: int) -> int: ...

    def mark_failed(self, job_id: str, slice_id: str, epoch: int, error: str) -> None: ...

    def mark_staged(
        self,
        job_id: str,
        slice_id: str,
        epoch: int,
        *,
        rows: int,
        token: CommitToken,
        staged: Mapping[str, Any],
        quarantined: int = 0,
    ) -> None: ...

    def mark_committed(
        self,
        job_id: str,
        slice_id: str,
        epoch: int,
        *,
        rows: int,
        token: CommitToken | None,
        quarantined: int = 0,
        snapshot_id: int | None = None,
    ) -> None: ...

    def record_pause(self, job_id: str, seconds: float, reason: str) -> None: ...

    def acquire_lease(
        self, job_id: str, owner: LeaseOwner, ttl_s: float, *, takeover: bool = False
    ) -> object: ...

    def renew_lease(self, job_id: str, owner: LeaseOwner, ttl_s: float) -> bool: ...

    def release_lease(self, job_id: str, owner: LeaseOwner) -> bool: ...


@dataclass(frozen=True)
class RunReport:
    """The end state of one runner pass."""

    total: int
    committed: int
    failed: tuple[str, ...]
    remaining: int
    rows: int
    retries: int
    cancelled: bool
    worker_deaths: int = 0  # slices lost to a dead worker (each retried)
    not_selected: tuple[str, ...] = ()  # slices still to do that a partial run left out
    errors: tuple[tuple[str, str], ...] = ()  # (slice id, last error) of each failed slice

    @property
    def exit_code(self) -> ExitCode:
        """CANCELLED, PARTIAL (some slices failed) or OK (every slice committed)."""
        if self.cancelled:
            return ExitCode.CANCELLED
        if self.failed or self.remaining:
            return ExitCode.PARTIAL
        return ExitCode.OK


@dataclass
class StopSignal:
    """Set by signal handlers: ``stop`` = finish in-flight, ``abandon`` = do not wait."""

    stop: threading.Event = field(default_factory=threading.Event)
    abandon: threading.Event = field(default_factory=threading.Event)

    def request(self) -> None:
        """First call stops submitting, the second abandons in-flight slices."""
        if self.stop.is_set():
            self.abandon.set()
        self.stop.set()


@dataclass
class _Run:
    """Mutable bookkeeping of one runner pass (private)."""

    todo: SliceQueue
    slices: dict[str, Slice] = field(default_factory=dict)  # in flight or waiting to retry
    attempts: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, CommitToken] = field(default_factory=dict)  # of the latest attempt
    inflight: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    committed: int = 0
    rows: int = 0
    retries: int = 0
    worker_deaths: int = 0


def default_pool(config: RunnerConfig) -> WorkerPool:
    """The :class:`WorkerPool` ``config`` asks for: local processes, or Ray tasks."""
    if config.pool == "ray":
        from coordinator.run.ray_pool import RayWorkerPool

        return RayWorkerPool(config.concurrency, address=config.ray_address)
    from coordinator.run.pool import ProcessWorkerPool

    return ProcessWorkerPool(config.concurrency, mp_context=config.mp_context)


class Runner:
    """Runs the stored plan of one job epoch (see the module docstring).

    ``pool`` (default :func:`default_pool`) is shut down when :meth:`run` returns.
    """

    def __init__(
        self,
        job: Any,
        store: SliceLedger,
        epoch: Epoch,
        config: RunnerConfig,
        *,
        lag_gate: LagGate | None = None,
        progress: ProgressSink | None = None,
        stop: StopSignal | None = None,
        pool: WorkerPool | None = None,
        clock: Callable[[], float] = time.monotonic,
        committer: BatchCommitter | None = None,
    ) -> None:
        self.job, self.store, self.epoch, self.config = job, store, epoch, config
        self.committer = committer
        self.lag_gate = lag_gate
        self.progress: ProgressSink = progress or NullProgress()
        self.stop = stop or StopSignal()
        self.job_id: str = job.job_id
        self._pool = pool
        self._clock = clock
        self._retry = config.retry

    def run(self, then: Callable[[], None] | None = None) -> RunReport:
        """Execute every slice not yet committed, holding the job's lease; returns what
        happened. ``then`` runs under the same lease once every slice is done (the publish of
        a write-audit-publish run: no second coordinator publishes beside it).
        ``LeaseHeldError`` if another coordinator runs the job."""
        with self._lease():
            report = self._run()
            if then is not None and report.exit_code == ExitCode.OK:
                then()
            return report

    @contextmanager
    def _lease(self) -> Iterator[None]:
        """Hold the job's lease, renewed every third of its ttl by a heartbeat thread. A
        renewal that finds another owner (a takeover) stops submitting slices."""
        owner, ttl = LeaseOwner.this_process(), self.config.lease_ttl_s
        self.store.acquire_lease(self.job_id, owner, ttl, takeover=self.config.takeover)
        done = threading.Event()

        def beat() -> None:
            while not done.wait(ttl / 3):
                try:
                    if self.store.renew_lease(self.job_id, owner, ttl):
                        continue
                except Exception as exc:  # the next beat retries; expiry is the backstop
                    log.warning("job=%s lease heartbeat failed: %s", self.job_id, exc)
                    continue
                log.error("job=%s: lease taken over by another coordinator; stopping", self.job_id)
                self.stop.stop.set()
                return

        thread = threading.Thread(target=beat, name="seamline-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self.store.release_lease(self.job_id, owner)

    def _run(self) -> RunReport:
        if self.committer is not None:  # batches a killed coordinator left behind
            self.committer.recover()
        counts = self.store.slice_counts(self.job_id, self.epoch)
        total = sum(counts.values())
        todo = sum(counts.get(s, 0) for s in TODO)
        left_out: list[str] = []
        if self.config.only or self.config.limit is not None:
            chosen, left_out = select_slices(
                self.store.iter_slices(self.job_id, self.epoch), self.config.only,
                self.config.limit,
            )  # fmt: skip
            log.info("job=%s partial run: %d slices selected, %d left for a later run",
                     self.job_id, len(chosen), len(left_out))  # fmt: skip
            picked = set(chosen)
            source: Iterable[Slice] = (
                r.slice for r in self._todo_records() if r.slice_id in picked
            )
            todo = len(chosen)
        else:
            source = (r.slice for r in self._todo_records())
        state = _Run(todo=SliceQueue(source))
        done_before = total - todo - len(left_out)
        self.progress.start(total, done_before)
        pool = self._pool or default_pool(self.config)
        try:
            self._loop(pool, state)
            if self.committer is not None and not self.stop.abandon.is_set():
                self.committer.flush()  # what the workers staged, cancelled runs included
        finally:
            abandon = self.stop.abandon.is_set()
            pool.shutdown(terminate=abandon)  # abandoned slices stay `running` for resume
            self.progress.stop()
        return RunReport(
            total=total,
            committed=done_before + state.committed,
            failed=tuple(sorted(state.failed)),
            # every chosen slice ends committed, failed for good, or still to do
            remaining=todo - state.committed - len(state.failed) + len(left_out),
            rows=state.rows,
            retries=state.retries,
            cancelled=self.stop.stop.is_set(),
            worker_deaths=state.worker_deaths,
            not_selected=tuple(left_out),
            errors=tuple(sorted((s, state.errors[s]) for s in state.failed)),
        )

    def _todo_records(self) -> Iterator[SliceRecord]:
        """The slices still to run, in plan order, paged from the store by status."""
        return self.store.iter_slices(self.job_id, self.epoch, statuses=TODO)

    def _loop(self, pool: WorkerPool, state: _Run) -> None:
        while state.todo.soonest() is not None or state.inflight:
            if self.stop.abandon.is_set():
                log.warning("abandoning %d in-flight slices", len(state.inflight))
                return
            if not self.stop.stop.is_set():
                self._submit_ready(pool, state)
            elif not state.inflight:
                return
            timeout = self._next_wait(pool, state)
            if not state.inflight:  # only slices waiting for their backoff
                self.stop.stop.wait(timeout)
                continue
            for outcome in pool.completed(timeout):
                self._finish(outcome, state)
            if self.committer is not None:
                self.committer.commit_due()

    def _next_wait(self, pool: WorkerPool, state: _Run) -> float:
        soonest = state.todo.soonest()
        if soonest is None or len(state.inflight) >= pool.capacity:
            return 0.5
        return min(0.5, max(0.01, soonest - self._clock()))

    def _submit_ready(self, pool: WorkerPool, state: _Run) -> None:
        while len(state.inflight) < pool.capacity and not self.stop.stop.is_set():
            soonest = state.todo.soonest()
            if (
                soonest is None
                or soonest > self._clock()
                or self._paused_for_lag()
                or self.stop.stop.is_set()
            ):
                return  # nothing ready, paused for lag, or stopped while the gate was asked
            slice_ = state.todo.pop(self._clock())
            if slice_ is None:
                return
            state.slices[slice_.slice_id] = slice_
            attempt = self.store.mark_running(self.job_id, slice_.slice_id, self.epoch)
            state.attempts[slice_.slice_id] = state.attempts.get(slice_.slice_id, 0) + 1
            token = CommitToken(
                self.job_id, slice_.slice_id, attempt, self.epoch, "backfill", slice_.scope.ranges
            )
            state.tokens[slice_.slice_id] = token
            pool.submit(SliceTask(self.config.executor, self.job, slice_, token))
            state.inflight.add(slice_.slice_id)
            log.info("slice=%s attempt=%d submitted", slice_.slice_id, attempt)

    def _paused_for_lag(self) -> bool:
        if self.lag_gate is None:
            return False
        pause = self.lag_gate()
        if not pause or pause <= 0:
            return False
        self.store.record_pause(self.job_id, pause, "live lag above backfill.lag_threshold")
        self.progress.note(f"paused {pause:.1f}s for live lag")
        log.info("job=%s pausing %.1fs for live lag", self.job_id, pause)
        self.stop.stop.wait(pause)
        self.progress.note("")
        return True

    def _finish(self, outcome: SliceOutcome, state: _Run) -> None:
        sid = outcome.slice_id
        state.inflight.discard(sid)
        if outcome.result is not None:
            self._committed(sid, outcome.result, state)
            return
        error = outcome.error or "unknown error"
        state.worker_deaths += outcome.worker_died
        tries = state.attempts.get(sid, 1)
        again = (outcome.retriable or outcome.worker_died) and tries < self._retry.attempts
        stored = retry_note(tries, self._retry.attempts) + error if again else error
        self.store.mark_failed(self.job_id, sid, self.epoch, stored)
        if again:
            delay = self._retry.delay(tries)
            state.todo.retry(self._clock() + delay, state.slices[sid])
            state.retries += 1
            self.progress.retry()
            log.warning(
                "slice=%s failed (attempt %d), retry in %.1fs: %s", sid, tries, delay, error
            )
        else:
            state.slices.pop(sid, None)
            state.failed.add(sid)
            state.errors[sid] = error
            log.error("slice=%s failed after %d attempts: %s", sid, tries, error)

    def _committed(self, sid: str, result: SliceResult, state: _Run) -> None:
        done = state.slices.pop(sid)
        if result.staged is not None:  # publish = "atomic": written, not yet visible
            self.store.mark_staged(
                self.job_id, sid, self.epoch, rows=result.rows, token=state.tokens[sid],
                staged=result.staged, quarantined=result.quarantined,
            )  # fmt: skip
            if self.committer is not None:  # the coordinator commits it with its batch
                self.committer.add(sid, done.scope, result.staged)
        else:
            self._mark_committed(sid, result)
        state.committed += 1
        state.rows += result.rows
        self.progress.slice_done(result.rows)

    def _mark_committed(self, sid: str, result: SliceResult) -> None:
        commit = result.commit
        self.store.mark_committed(
            self.job_id,
            sid,
            self.epoch,
            rows=result.rows,
            token=commit.token if commit else None,
            quarantined=result.quarantined,
            snapshot_id=int(commit.snapshot_id) if commit else None,
        )


#: How a failed attempt that this run will retry starts its stored error (``status`` shows such
#: a slice as ``retrying`` while the run's coordinator holds the job's lease).
RETRY_NOTE = "retrying after attempt "


def retry_note(attempt: int, attempts: int) -> str:
    """The stored error's prefix for a failed attempt the run retries.

    >>> retry_note(1, 5)
    'retrying after attempt 1 of 5: '
    """
    return f"{RETRY_NOTE}{attempt} of {attempts}: "


__all__ = [
    "RETRY_NOTE",
    "LagGate",
    "Outcome",
    "RunReport",
    "Runner",
    "RunnerConfig",
    "SliceLedger",
    "StopSignal",
    "default_pool",
    "retry_note",
    "select_slices",
]
