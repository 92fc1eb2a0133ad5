"""The runner: executes a stored plan's slices in worker processes, resumably.

* Bounded concurrency in processes (``spawn`` context: no GIL between Arrow workloads, no
  forked locks). The executor is a ``module:function`` import path (a
  :class:`coordinator.core.ports.SliceExecutor`), imported inside each worker.
* Every transition goes through the state store with the run's epoch: a stale coordinator
  stops at its next transition (:class:`StaleEpochError`).
* Slices left ``running`` by a dead coordinator are run again: executors are idempotent by
  commit token. Failed slices are retried with exponential backoff up to ``max_attempts``
  attempts per run; configuration, data-loss and duplicate-key errors are not retried.
* ``stop`` (set by SIGINT/SIGTERM in the CLI) stops submitting; in-flight slices finish and
  are recorded. ``abandon`` (a second signal) stops waiting: abandoned slices stay ``running``
  and are re-run on resume.
* ``lag_gate()`` is consulted before each submission; a number is seconds to pause (recorded
  in the state store's pauses), ``None`` means go.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from coordinator.core.errors import (
    ConfigError,
    DuplicateKeyError,
    ExitCode,
    SourceDataLossError,
    StaleEpochError,
)
from coordinator.core.logs import redact
from coordinator.core.ports import SliceResult
from coordinator.core.values import CommitToken, Epoch, Slice
from coordinator.run.progress import NullProgress, ProgressSink
from coordinator.state.store import LeaseOwner, SliceRecord, StateStore

log = logging.getLogger(__name__)

LagGate = Callable[[], float | None]
_TERMINAL = (ConfigError, SourceDataLossError, DuplicateKeyError, StaleEpochError)


@dataclass(frozen=True)
class RunnerConfig:
    """How slices are executed."""

    executor: str  # "module:function"
    concurrency: int = 2
    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    mp_context: str = "spawn"
    takeover: bool = False  # steal the job's lease even if its holder looks alive
    lease_ttl_s: float = 30.0  # the lease expires this long after the last heartbeat

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class Outcome:
    """What a worker sends back (plain values: always picklable)."""

    slice_id: str
    result: SliceResult | None = None
    error: str | None = None
    retriable: bool = True


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


_EXECUTORS: dict[str, Callable[..., SliceResult]] = {}


def load_executor(ref: str) -> Callable[..., SliceResult]:
    """Import ``module:function`` (cached per process); ``ConfigError`` if impossible."""
    if ref not in _EXECUTORS:
        module_name, _, name = ref.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"executor={ref}: cannot import ({exc})",
                hint="pass --executor module.path:function",
            ) from None
        _EXECUTORS[ref] = func
    return _EXECUTORS[ref]


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides about cancelling


@contextmanager
def _epoch_guard(job: Any) -> Iterator[None]:
    """Hold the state store's epoch lock across every table commit (see ``epoch_held``)."""
    from backfill.sinks.common import commit_guard

    with (
        StateStore(job.state_url(), create=False) as store,
        commit_guard(lambda tok: store.epoch_held(tok.job_id, tok.epoch)),
    ):
        yield


def run_one(ref: str, job: Any, slice_: Slice, token: CommitToken) -> Outcome:
    """Worker entry point: run one slice, never raise (errors come back as values)."""
    try:
        with _epoch_guard(job):
            result = load_executor(ref)(job, slice_, token)
    except Exception as exc:
        log.warning("slice=%s attempt=%d failed: %s", slice_.slice_id, token.attempt, exc)
        text = redact(f"{type(exc).__name__}: {exc}")
        return Outcome(slice_.slice_id, error=text, retriable=not isinstance(exc, _TERMINAL))
    return Outcome(slice_.slice_id, result=result)


@dataclass
class _Run:
    """Mutable bookkeeping of one runner pass (private)."""

    todo: list[tuple[float, str]]  # (not_before monotonic, slice_id), kept in plan order
    attempts: dict[str, int] = field(default_factory=dict)
    inflight: dict[cf.Future[Outcome], str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    committed: int = 0
    rows: int = 0
    retries: int = 0


class Runner:
    """Runs the stored plan of one job epoch (see the module docstring)."""

    def __init__(
        self,
        job: Any,
        store: StateStore,
        epoch: Epoch,
        config: RunnerConfig,
        *,
        lag_gate: LagGate | None = None,
        progress: ProgressSink | None = None,
        stop: StopSignal | None = None,
    ) -> None:
        self.job, self.store, self.epoch, self.config = job, store, epoch, config
        self.lag_gate = lag_gate
        self.progress: ProgressSink = progress or NullProgress()
        self.stop = stop or StopSignal()
        self.job_id: str = job.job_id

    def run(self) -> RunReport:
        """Execute every slice not yet committed, holding the job's lease; returns what
        happened. ``LeaseHeldError`` if another coordinator runs the job."""
        with self._lease():
            return self._run()

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
        records = self.store.list_slices(self.job_id, self.epoch)
        by_id = {r.slice_id: r for r in records}
        state = _Run(todo=[(0.0, r.slice_id) for r in records if _needs_run(r)])
        done_before = len(records) - len(state.todo)
        self.progress.start(len(records), done_before)
        ctx = multiprocessing.get_context(self.config.mp_context)
        pool = cf.ProcessPoolExecutor(
            self.config.concurrency, mp_context=ctx, initializer=_worker_init
        )
        try:
            self._loop(pool, state, by_id)
        finally:
            abandon = self.stop.abandon.is_set()
            if abandon:  # do not wait for in-flight slices: they stay `running` for resume
                for proc in list(getattr(pool, "_processes", {}).values()):
                    proc.terminate()
            pool.shutdown(wait=not abandon, cancel_futures=True)
            self.progress.stop()
        return RunReport(
            total=len(records),
            committed=done_before + state.committed,
            failed=tuple(sorted(state.failed)),
            remaining=len(state.todo) + len(state.inflight),
            rows=state.rows,
            retries=state.retries,
            cancelled=self.stop.stop.is_set(),
        )

    def _loop(
        self, pool: cf.ProcessPoolExecutor, state: _Run, by_id: dict[str, SliceRecord]
    ) -> None:
        while state.todo or state.inflight:
            if self.stop.abandon.is_set():
                log.warning("abandoning %d in-flight slices", len(state.inflight))
                return
            if not self.stop.stop.is_set():
                self._submit_ready(pool, state, by_id)
            elif not state.inflight:
                return
            timeout = self._next_wait(state)
            done, _ = cf.wait(list(state.inflight), timeout=timeout, return_when="FIRST_COMPLETED")
            for fut in done:
                self._finish(fut, state)

    def _next_wait(self, state: _Run) -> float:
        if not state.todo or len(state.inflight) >= self.config.concurrency:
            return 0.5
        soonest = min(t for t, _ in state.todo) - time.monotonic()
        return min(0.5, max(0.01, soonest))

    def _submit_ready(
        self, pool: cf.ProcessPoolExecutor, state: _Run, by_id: dict[str, SliceRecord]
    ) -> None:
        while len(state.inflight) < self.config.concurrency and not self.stop.stop.is_set():
            now = time.monotonic()
            ready = next((item for item in state.todo if item[0] <= now), None)
            if ready is None or self._paused_for_lag():
                return
            state.todo.remove(ready)
            slice_ = by_id[ready[1]].slice
            attempt = self.store.mark_running(self.job_id, slice_.slice_id, self.epoch)
            state.attempts[slice_.slice_id] = state.attempts.get(slice_.slice_id, 0) + 1
            token = CommitToken(
                self.job_id, slice_.slice_id, attempt, self.epoch, "backfill", slice_.scope.ranges
            )
            fut = pool.submit(run_one, self.config.executor, self.job, slice_, token)
            state.inflight[fut] = slice_.slice_id
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

    def _finish(self, fut: cf.Future[Outcome], state: _Run) -> None:
        sid = state.inflight.pop(fut)
        try:
            outcome = fut.result()
        except Exception as exc:  # the worker process died (BrokenProcessPool, pickling)
            outcome = Outcome(sid, error=redact(f"{type(exc).__name__}: {exc}"))
        if outcome.result is not None:
            self._committed(sid, outcome.result, state)
            return
        error = outcome.error or "unknown error"
        self.store.mark_failed(self.job_id, sid, self.epoch, error)
        tries = state.attempts.get(sid, 1)
        if outcome.retriable and tries < self.config.max_attempts:
            delay = self.config.backoff(tries)
            state.todo.append((time.monotonic() + delay, sid))
            state.retries += 1
            self.progress.retry()
            log.warning(
                "slice=%s failed (attempt %d), retry in %.1fs: %s", sid, tries, delay, error
            )
        else:
            state.failed.add(sid)
            log.error("slice=%s failed after %d attempts: %s", sid, tries, error)

    def _committed(self, sid: str, result: SliceResult, state: _Run) -> None:
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
        state.committed += 1
        state.rows += result.rows
        self.progress.slice_done(result.rows)


def _needs_run(record: SliceRecord) -> bool:
    return record.status in ("pending", "running", "failed")


def run_plan(
    job: Any,
    store: StateStore,
    epoch: Epoch,
    config: RunnerConfig,
    **kwargs: Any,
) -> RunReport:
    """Convenience wrapper: ``Runner(job, store, epoch, config, **kwargs).run()``."""
    return Runner(job, store, epoch, config, **kwargs).run()


def pending_ids(records: Sequence[SliceRecord]) -> list[str]:
    """Ids of slices a run would execute."""
    return [r.slice_id for r in records if _needs_run(r)]


__all__ = [
    "LagGate",
    "Outcome",
    "RunReport",
    "Runner",
    "RunnerConfig",
    "StopSignal",
    "load_executor",
    "pending_ids",
    "run_one",
    "run_plan",
]
