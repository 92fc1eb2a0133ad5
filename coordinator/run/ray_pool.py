"""Slices as Ray tasks: :class:`RayWorkerPool` implements ``WorkerPool`` (``executor = "ray"``).

* **Ray is imported only here, and only when a job asks for it** (``[backfill] executor =
  "ray"``); without the ``seamline[ray]`` extra the run stops with a ``ConfigError`` saying
  so, before any slice runs.
* **Where**: ``[backfill.ray] address`` connects to that cluster (``ray://head:10001`` through
  Ray Client, ``head:6379``, ``auto``); without it a private local Ray is started for the run
  (``num_cpus = concurrency``, no dashboard, Ray's own logging at ERROR) and shut down with
  the pool. A Ray session already open in this process is used as it is and left open.
* **The same slice, the same guarantees.** Each task runs :func:`coordinator.run.pool.run_one`
  (epoch guard around every table commit, errors come back as values), exactly as a local
  worker process does; commit tokens and epoch fencing are unchanged.
* **A dead worker is a retried slice, and only the runner retries.** Tasks are submitted with
  ``max_retries=0``: a worker killed mid-slice (``WorkerCrashedError``), a lost node
  (``NodeDiedError``), Ray's memory monitor (``OutOfMemoryError``) or a task that exits the
  worker (``SystemExit``) come back as ``SliceOutcome(worker_died=True)``, which the runner
  retries with a new attempt and token like any other worker death.
* **Nothing secret in Ray's books**: a task's name (shown by ``ray list tasks``, the
  dashboard and the worker's process title) is its slice id; the job travels as the task's
  argument (pickled, as it does to a local worker process), never in a name or a log line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import warnings
from typing import Any

from coordinator.core.errors import ConfigError, ServiceError
from coordinator.core.logs import configure_worker_logging, current_log_settings, redact
from coordinator.core.ports import SliceOutcome, SliceTask
from coordinator.core.role import become_slice_worker
from coordinator.run.pool import outcome_of_error, run_one

log = logging.getLogger(__name__)

#: Ray errors that mean the worker (or its node, or the Ray session) died under the task.
_DEATHS = (
    "WorkerCrashedError",
    "NodeDiedError",
    "LocalRayletDiedError",
    "OutOfMemoryError",
    "ObjectLostError",  # includes OwnerDiedError
    "RaySystemError",
    "ActorDiedError",
    "TaskCancelledError",
)
_UV_HOOK_ENV = "RAY_ENABLE_UV_RUN_RUNTIME_ENV"
#: Tries to start or reach Ray before the run gives up (a loaded host can miss Ray's own
#: start-up deadline once).
INIT_ATTEMPTS = 3
#: Object store of a local Ray: slices pass a job and return a small result, never data.
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024


def import_ray() -> Any:
    """The ``ray`` module, or a ``ConfigError`` saying how to install it."""
    # Ray's `uv run` integration would copy the working directory into the Ray session and
    # build a new virtualenv for the workers: a local Ray's workers use this interpreter, a
    # cluster's workers the image's seamline, and no file of ours leaves this machine.
    os.environ[_UV_HOOK_ENV] = "0"
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f'key=backfill.executor: expected the ray package for executor = "ray", found none '
            f"({exc.msg})",
            hint='install seamline[ray] (pip install "seamline[ray]"), or set executor = '
            '"process"',
        ) from None
    constants = sys.modules.get("ray._private.ray_constants")  # read when ray was imported
    if constants is not None and hasattr(constants, _UV_HOOK_ENV):
        setattr(constants, _UV_HOOK_ENV, False)
    return ray


def _worker_run(task: SliceTask, log_settings: tuple[str, bool]) -> SliceOutcome:
    """The Ray task: one slice through :func:`run_one`, inside a Ray worker process (which
    serves many slices: it keeps each job's sink, as a local worker process does)."""
    become_slice_worker()
    configure_worker_logging(*log_settings)  # the coordinator's level, JSON choice, redaction
    # Ctrl-C at the coordinator's terminal: the coordinator decides about cancelling
    with contextlib.suppress(ValueError):  # ValueError: not the worker's main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return run_one(task.executor, task.job, task.slice_, task.token)


class RayWorkerPool:
    """A :class:`~coordinator.core.ports.WorkerPool` of Ray tasks (see the module docstring).

    Ray is connected on the first :meth:`submit` (a run with nothing to do never starts it).
    """

    def __init__(self, concurrency: int, *, address: str | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"expected concurrency >= 1, found concurrency={concurrency}")
        self._capacity = concurrency
        self._address = address
        self._ray = import_ray()  # fail before the first slice, not in the middle of a run
        self._remote: Any = None
        self._owns_session = False
        self._inflight: dict[Any, str] = {}  # ObjectRef -> slice id
        self.deaths = 0  # how many tasks came back because their worker died

    @property
    def capacity(self) -> int:
        """How many tasks may be in flight at once (``[backfill] concurrency``)."""
        return self._capacity

    def _connect(self) -> Any:
        if self._remote is not None:
            return self._remote
        ray = self._ray
        if not ray.is_initialized():
            where = self._address or "a local Ray"
            log.info("starting slices on %s (concurrency=%d)", where, self._capacity)
            common: dict[str, Any] = {
                "logging_level": logging.ERROR,
                "log_to_driver": True,  # the workers' log lines, on our stderr (see below)
            }
            _keep_stdout_clean()
            for attempt in range(1, INIT_ATTEMPTS + 1):
                try:
                    with warnings.catch_warnings():  # Ray forks its servers: lance warns
                        warnings.filterwarnings("ignore", message=".*not fork-safe")
                        self._init(common)
                    break
                except Exception as exc:  # e.g. a local raylet slower than Ray's 30 s start
                    with contextlib.suppress(Exception):
                        ray.shutdown()
                    text = redact(f"{type(exc).__name__}: {_first_line(exc)}")
                    if attempt == INIT_ATTEMPTS:
                        raise ServiceError(
                            f"ray: expected a Ray session on {where}, found none after "
                            f"{attempt} attempts ({text})",
                            hint="check [backfill.ray] address and that the cluster is up "
                            "(a local Ray: the machine's load), or use executor = \"process\"",
                        ) from None
                    log.warning("ray: starting on %s failed (%s); trying again", where, text)
            self._owns_session = True
        self._remote = ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(_worker_run)
        return self._remote

    def _init(self, common: dict[str, Any]) -> None:
        ray = self._ray
        if self._address is None:
            ray.init(address="local", num_cpus=self._capacity, include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)  # fmt: skip
        else:
            ray.init(address=self._address, **common)

    def submit(self, task: SliceTask) -> None:
        """Start ``task`` as a Ray task named after its slice."""
        if len(self._inflight) >= self._capacity:
            raise ValueError(
                f"expected at most {self._capacity} tasks in flight, found {len(self._inflight)}"
            )
        sid = task.slice_.slice_id
        ref = self._connect().options(name=sid).remote(task, current_log_settings())
        self._inflight[ref] = sid

    def completed(self, timeout_s: float) -> list[SliceOutcome]:
        """Outcomes of finished tasks, waiting up to ``timeout_s`` for the first one."""
        if not self._inflight:
            return []
        refs = list(self._inflight)
        ready, rest = self._ray.wait(refs, num_returns=1, timeout=timeout_s)
        if ready and rest:
            more, _ = self._ray.wait(rest, num_returns=len(rest), timeout=0)
            ready = [*ready, *more]
        return [self._outcome(ref) for ref in ready]

    def _outcome(self, ref: Any) -> SliceOutcome:
        sid = self._inflight.pop(ref)
        exceptions = self._ray.exceptions
        try:
            outcome: SliceOutcome = self._ray.get(ref)
            return outcome
        except exceptions.RayTaskError as exc:  # raised inside the task, around run_one
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):  # e.g. the task could not be unpickled there
                return outcome_of_error(sid, cause)
            return self._died(sid, exc)  # SystemExit, KeyboardInterrupt: the worker is gone
        except Exception as exc:
            if any(_is(exc, exceptions, name) for name in _DEATHS):
                return self._died(sid, exc)
            return outcome_of_error(sid, exc)

    def _died(self, sid: str, exc: BaseException) -> SliceOutcome:
        self.deaths += 1
        log.warning("slice=%s: its Ray worker died (%s); it will be retried",
                    sid, type(exc).__name__)  # fmt: skip
        text = redact(f"Ray worker died: {type(exc).__name__}: {_first_line(exc)}")
        return SliceOutcome(sid, error=text, retriable=True, worker_died=True)

    def in_flight(self) -> int:
        """Tasks whose outcome :meth:`completed` has not returned yet."""
        return len(self._inflight)

    def shutdown(self, *, terminate: bool = False) -> None:
        """Wait for in-flight tasks, or cancel them, killing their workers (``terminate``);
        then shut down the Ray session if this pool started it."""
        ray = self._ray
        if self._inflight and ray.is_initialized():
            if terminate:
                for ref in self._inflight:
                    ray.cancel(ref, force=True)
            else:
                ray.wait(list(self._inflight), num_returns=len(self._inflight))
        self._inflight.clear()
        if self._owns_session and ray.is_initialized():
            ray.shutdown()
        self._owns_session = False
        self._remote = None


def _keep_stdout_clean() -> None:
    """Send what Ray prints in the coordinator to stderr: its driver prints its error messages
    ("A worker died ...") and the workers' stdout on stdout, which holds ``--output json``.

    Ray has no setting for this: its printer (a module function it looks up on each call) is
    wrapped once per process. Left alone if Ray's internals moved."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "seamline_stderr", False):
        return

    def to_stderr(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return original({**data, "is_err": True}, *args, **kwargs)

    to_stderr.seamline_stderr = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]


def _is(exc: BaseException, exceptions: Any, name: str) -> bool:
    cls = getattr(exceptions, name, None)
    return isinstance(cls, type) and isinstance(exc, cls)


__all__ = ["LOCAL_OBJECT_STORE_BYTES", "RayWorkerPool", "import_ray"]
