"""Worker processes for the runner: :class:`ProcessWorkerPool` implements ``WorkerPool``.

* **Warm workers** (``forkserver``, the default where the platform has it): one fork server
  per coordinator imports the heavy modules once (:data:`WARM_PRELOAD`: pyarrow, pyiceberg,
  sqlalchemy, lance, confluent_kafka and the executor), and every worker is a ``fork`` of it,
  ready in milliseconds instead of seconds of imports. The fork server has only imported
  modules (no Kafka client, no catalog connection, no Lance runtime, no Arrow work), so
  forking it is safe where forking the coordinator is not (see ``coordinator.run.warm``).
  It is started as soon as the pool is built, or earlier (:func:`warm_up`, called by
  ``seamline run`` before its cut), so its imports overlap the coordinator's own work; it is
  killed when the coordinator exits (:func:`stop_fork_server`). ``spawn`` stays available
  (``mp_context="spawn"``): no GIL between Arrow workloads, no forked state at all.
* **Workers die with their coordinator.** The worker initializer asks Linux to SIGKILL the
  worker when its OS parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) and starts a daemon
  thread that exits the worker (``os._exit``) as soon as its OS parent changes or its
  coordinator (the *owner*, identified by pid and start time) is gone. Under ``forkserver``
  the OS parent is the fork server, not the coordinator: the fork server exits when the
  coordinator does (it reads EOF on a pipe only the coordinator holds), which SIGKILLs its
  workers, and the owner watch covers the rest (e.g. a fork server that died before the
  signal was armed).
* **The coordinator's environment at pool start is the worker's** (as under ``spawn``): the
  fork server was started earlier, so the initializer brings the worker's ``os.environ`` up
  to date (log settings, test switches). It travels through the pool's pipe, never in argv.
* **A killed worker is a retried slice, never a failed run.** When a worker dies,
  ``concurrent.futures`` breaks the whole executor (``BrokenProcessPool``) and fails every
  task in flight. Each of them comes back as a retriable outcome with ``worker_died=True``;
  the broken executor is dropped and a new one started on the next :meth:`submit`.
* Workers tell the pool their pid and start time at start (a queue), so
  ``shutdown(terminate=True)`` kills exactly them (never a recycled pid), without reaching
  into the executor's private state.

:func:`run_one` is the worker entry point: it runs one :class:`SliceTask` and never raises
(errors come back as values, classified by :func:`coordinator.core.retry.is_retriable`).
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import ctypes
import ctypes.util
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from coordinator.core.errors import ConfigError
from coordinator.core.logs import configure_worker_logging, redact
from coordinator.core.ports import SliceOutcome, SliceResult, SliceTask
from coordinator.core.retry import is_retriable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: How often the fallback watch thread checks the parent pid.
PARENT_WATCH_S = 0.5

#: What the fork server imports once for every warm worker (a missing module is skipped).
WARM_PRELOAD = (
    "coordinator.run.warm",  # first: the fork server's own settings
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.dataset",
    "pyarrow.parquet",
    "sqlalchemy",
    "confluent_kafka",
    "lance",
    "pyiceberg.catalog.sql",
    "pyiceberg.table",
    "coordinator.state.store",
    "backfill.executor",
    "backfill.sinks.iceberg",
    "backfill.sinks.lance",
)

#: The start method of :class:`ProcessWorkerPool` when none is given.
DEFAULT_MP_CONTEXT = (
    "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
)

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


@contextmanager
def _epoch_guard(job: Any) -> Iterator[None]:
    """Hold the state store's epoch lock across every table commit (see ``epoch_held``)."""
    from backfill.sinks.common import commit_guard
    from coordinator.state.store import StateStore

    with (
        StateStore(job.state_url(), create=False) as store,
        commit_guard(lambda tok: store.epoch_held(tok.job_id, tok.epoch)),
    ):
        yield


def outcome_of_error(slice_id: str, exc: BaseException) -> SliceOutcome:
    """A failed outcome for ``exc``: redacted text, retriable by the shared policy's rules."""
    text = redact(f"{type(exc).__name__}: {exc}")
    return SliceOutcome(slice_id, error=text, retriable=is_retriable(exc))


def run_one(ref: str, job: Any, slice_: Any, token: Any) -> SliceOutcome:
    """Worker entry point: run one slice, never raise (errors come back as values)."""
    try:
        with _epoch_guard(job):
            result = load_executor(ref)(job, slice_, token)
    except Exception as exc:
        log.warning("slice=%s attempt=%d failed: %s", slice_.slice_id, token.attempt, exc)
        return outcome_of_error(slice_.slice_id, exc)
    return SliceOutcome(slice_.slice_id, result=result)


def _run_task(task: SliceTask) -> SliceOutcome:
    return run_one(task.executor, task.job, task.slice_, task.token)


# -- dying with the coordinator ----------------------------------------------------------------


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies; ``False`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def process_start(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot, from /proc); ``None`` if it is gone,
    a zombie, or there is no procfs."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def owner_alive(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` started at ``start`` (see :func:`process_start`) still runs
    (a recycled pid has another start time); without procfs, whether ``pid`` exists."""
    if start is None or not os.path.isdir("/proc"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return process_start(pid) == start


def watch_parent(
    parent_pid: int,
    interval_s: float = PARENT_WATCH_S,
    *,
    owner: tuple[int, int | None] | None = None,
) -> threading.Thread:
    """Start a daemon thread that ends this process once its OS parent is no longer
    ``parent_pid`` (the parent died and the process was re-parented) or, when given, its
    ``owner`` ``(pid, start time)`` is gone."""

    def watch() -> None:
        while os.getppid() == parent_pid and (owner is None or owner_alive(*owner)):
            time.sleep(interval_s)
        os._exit(70)  # no clean-up: the coordinator that owned this work is gone

    thread = threading.Thread(target=watch, name="seamline-parent-watch", daemon=True)
    thread.start()
    return thread


def _sync_environ(env: dict[str, str]) -> None:
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def worker_init(
    owner_pid: int,
    pids: Any,
    owner_start: int | None = None,
    env: dict[str, str] | None = None,
    via_server: bool = False,
) -> None:
    """Initializer of every worker process (see the module docstring).

    ``owner_pid``/``owner_start``: the coordinator; ``env``: its environment at pool start;
    ``via_server``: forked by a fork server (whose pid the coordinator does not know), not
    by the coordinator itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides about cancelling
    set_parent_death_signal()
    parent = os.getppid()  # the coordinator, or under forkserver the fork server
    if not owner_alive(owner_pid, owner_start) or (not via_server and parent != owner_pid):
        os._exit(70)  # the coordinator died before the signal was armed
    watch_parent(parent, owner=(owner_pid, owner_start))
    if env is not None:
        _sync_environ(env)
    configure_worker_logging()  # the coordinator's level, JSON choice and redaction
    pids.put((os.getpid(), process_start(os.getpid())))


def warm_up(preload: tuple[str, ...] = WARM_PRELOAD) -> bool:
    """Start this process's fork server now, importing ``preload`` (no-op when it runs
    already); ``False`` where the platform has no ``forkserver``. Returns at once: the
    imports run in the fork server while the caller goes on."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload(list(preload))
    forkserver.ensure_running()
    global _STOP_REGISTERED
    if not _STOP_REGISTERED:
        atexit.register(stop_fork_server)
        _STOP_REGISTERED = True
    return True


_STOP_REGISTERED = False


def stop_fork_server() -> None:
    """Kill this process's fork server and reap it (run at exit: the server would otherwise
    exit on its own a moment after this process, or only once its preload finished). Any
    worker still running dies with it (its parent-death signal)."""
    from multiprocessing import forkserver

    server = forkserver._forkserver  # the stdlib's per-process singleton
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    stop = getattr(server, "_stop", None)  # closes the alive pipe, reaps, removes the socket
    try:
        if stop is not None:
            stop()
        else:
            os.waitpid(pid, 0)
    except (ChildProcessError, OSError):
        pass


# -- the pool ------------------------------------------------------------------------------------


class ProcessWorkerPool:
    """A :class:`~coordinator.core.ports.WorkerPool` of local worker processes."""

    def __init__(self, concurrency: int, *, mp_context: str | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"expected concurrency >= 1, found concurrency={concurrency}")
        self._capacity = concurrency
        self.mp_context = mp_context or DEFAULT_MP_CONTEXT
        self._ctx = multiprocessing.get_context(self.mp_context)
        if self.mp_context == "forkserver":
            warm_up()  # the fork server imports while the coordinator goes on
        self._pids_queue = self._ctx.SimpleQueue()
        self._pids: dict[int, int | None] = {}  # worker pid -> its start time
        self._executor: cf.ProcessPoolExecutor | None = None
        self._inflight: dict[cf.Future[SliceOutcome], str] = {}
        self.deaths = 0  # how many times a worker died (the executor broke)

    @property
    def capacity(self) -> int:
        """How many tasks may be in flight at once (the number of worker processes)."""
        return self._capacity

    def _live_executor(self) -> cf.ProcessPoolExecutor:
        if self._executor is None:
            self._executor = cf.ProcessPoolExecutor(
                self._capacity,
                mp_context=self._ctx,
                initializer=worker_init,
                initargs=(
                    os.getpid(),
                    self._pids_queue,
                    process_start(os.getpid()),
                    dict(os.environ),
                    self.mp_context == "forkserver",
                ),
            )
        return self._executor

    def submit(self, task: SliceTask) -> None:
        """Start ``task`` in a worker (a broken executor is replaced first)."""
        if len(self._inflight) >= self._capacity:
            raise ValueError(
                f"expected at most {self._capacity} tasks in flight, found {len(self._inflight)}"
            )
        try:
            fut = self._live_executor().submit(_run_task, task)
        except BrokenProcessPool:  # broke between two calls: start a fresh one
            self._drop_executor()
            fut = self._live_executor().submit(_run_task, task)
        self._inflight[fut] = task.slice_.slice_id

    def completed(self, timeout_s: float) -> list[SliceOutcome]:
        """Outcomes of finished tasks, waiting up to ``timeout_s`` for the first one."""
        if not self._inflight:
            return []
        done, _ = cf.wait(list(self._inflight), timeout=timeout_s, return_when="FIRST_COMPLETED")
        out = [self._outcome(fut) for fut in done]
        if any(o.worker_died for o in out):
            self._drop_executor()
        return out

    def _outcome(self, fut: cf.Future[SliceOutcome]) -> SliceOutcome:
        sid = self._inflight.pop(fut)
        try:
            return fut.result()
        except (BrokenProcessPool, cf.CancelledError) as exc:  # cancelled: its executor broke
            log.warning("slice=%s: its worker process died (%s); it will be retried", sid, exc)
            text = redact(f"worker process died: {type(exc).__name__}: {exc}")
            return SliceOutcome(sid, error=text, retriable=True, worker_died=True)
        except Exception as exc:  # e.g. the task or its result could not be pickled
            return outcome_of_error(sid, exc)

    def _drop_executor(self) -> None:
        """Forget a broken executor: its surviving workers are killed, its tasks failed."""
        if self._executor is None:
            return
        self.deaths += 1
        self._kill_workers()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None

    def in_flight(self) -> int:
        """Tasks whose outcome :meth:`completed` has not returned yet."""
        return len(self._inflight)

    def worker_pids(self) -> set[int]:
        """Pids of the workers started so far that are still alive."""
        while not self._pids_queue.empty():
            pid, start = self._pids_queue.get()
            self._pids[int(pid)] = start
        self._pids = {p: s for p, s in self._pids.items() if _alive_worker(p, s)}
        return set(self._pids)

    def _kill_workers(self) -> None:
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def shutdown(self, *, terminate: bool = False) -> None:
        """Wait for in-flight tasks, or kill the workers (``terminate``)."""
        if self._executor is not None:
            if terminate:
                self._kill_workers()
            self._executor.shutdown(wait=not terminate, cancel_futures=True)
            self._executor = None
        self._inflight.clear()


def _alive_worker(pid: int, start: int | None) -> bool:
    """Whether worker ``pid`` (started at ``start``) still runs: not a zombie, not a recycled
    pid. Under ``forkserver`` a worker is the fork server's child, not ours."""
    if not os.path.isdir("/proc") or start is None:  # killing a gone pid is harmless
        return True
    return process_start(pid) == start


__all__ = [
    "DEFAULT_MP_CONTEXT",
    "WARM_PRELOAD",
    "ProcessWorkerPool",
    "load_executor",
    "outcome_of_error",
    "owner_alive",
    "process_start",
    "run_one",
    "set_parent_death_signal",
    "stop_fork_server",
    "warm_up",
    "watch_parent",
    "worker_init",
]
