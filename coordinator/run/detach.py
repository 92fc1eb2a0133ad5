"""Detached runs: ``seamline run JOB --detach`` and ``seamline wait JOB [RUN]``.

:func:`start_detached` records the run in the state store (run id, host, log path, the run's
options), starts a supervisor process in a new session (``python -m coordinator.run.detach``)
with its output going to a log file beside the state, records the supervisor's pid and returns
at once. The supervisor runs ``seamline run JOB ...`` as its child (forwarding SIGTERM and
SIGINT, so a cancel still ends in a clean exit 130), then records the child's exit code. The
run lease (:mod:`coordinator.state.lease`) keeps a detached run and any other coordinator of
the job apart; :func:`refuse_if_running` refuses a second run up front.

:func:`follow` is ``seamline wait``: it prints the log's new lines as they come and returns
the run's record once it ended (or died without recording an exit code).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import sqlalchemy as sa

from coordinator.core.errors import ExitCode, LeaseHeldError, StateError
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.state.lease import pid_gone
from coordinator.state.runs import RunRecord
from coordinator.state.store import StateStore

log = logging.getLogger(__name__)

_CHILD = "from coordinator.cli.main import main; main()"  # ``seamline`` without a script path
# The state URL reaches the supervisor in its environment (never on a command line, which
# other users can read): its exit code is recorded even if the job file changed meanwhile.
_STATE_ENV = "SEAMLINE_DETACHED_STATE_URL"


def log_dir(job: JobSpec) -> Path:
    """``runs/`` beside a SQLite state file, else in the job folder's ``.seamline/``."""
    url = sa.make_url(job.state_url())
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(str(url.database)).parent / "runs"
    return job.base_dir / ".seamline" / "runs"


def refuse_if_running(job: JobSpec, job_file: str, store: StateStore) -> None:
    """``LeaseHeldError`` when a detached run of ``job`` is still running, or another
    coordinator holds the job's lease (checked again, atomically, when the run starts)."""
    run = store.get_run(job.job_id)
    if run is not None and run.state in ("starting", "running"):
        raise LeaseHeldError(
            f"job={job.job_id}: detached run run_id={run.run_id} (pid={run.pid}, "
            f"host={run.host}) is still running",
            hint=f"follow it with `seamline wait {job_file} {run.run_id}`, or stop it "
            f"(kill {run.pid}) before starting another",
        )
    lease = store.get_lease(job.job_id)
    if lease is None:
        return
    gone = lease.owner.host == socket.gethostname() and pid_gone(lease.owner.pid)
    if not lease.expired(datetime.now(UTC)) and not gone:
        raise LeaseHeldError(
            f"another coordinator ({lease.describe()}) is running job={job.job_id}",
            hint="wait for it, or take over with `seamline run --takeover` once it is dead",
        )


def start_detached(job: JobSpec, job_file: str, args: Sequence[str]) -> RunRecord:
    """Record and start a detached ``seamline run JOB ARGS``; returns its record at once."""
    run_id = uuid.uuid4().hex[:12]
    folder = log_dir(job)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{job.job_id}-{run_id}.log"
    with StateStore(job.state_url()) as store:
        store.ensure_job(job.job_id)
        refuse_if_running(job, job_file, store)
        store.record_run(job.job_id, run_id, str(log_path), list(args))
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "coordinator.run.detach", str(Path(job_file).resolve()),
                 run_id, *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", _STATE_ENV: job.state_url()},
            )  # fmt: skip
        store.set_run_pid(run_id, proc.pid)
        record = store.get_run(job.job_id, run_id)
    assert record is not None
    log.info("job=%s detached run_id=%s pid=%d log=%s", job.job_id, run_id, proc.pid, log_path)
    return record


def supervise(job_file: str, run_id: str, args: Sequence[str]) -> int:
    """The detached process: run ``seamline run JOB ARGS`` as a child, record its exit code."""
    state_url = os.environ.pop(_STATE_ENV, None) or load_job(job_file).state_url()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, "run", job_file, *args])

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    rc = child.wait()
    code = rc if rc >= 0 else 128 - rc  # killed by a signal: 128 + its number, as shells say
    print(f"seamline: detached run_id={run_id} ended exit_code={code}", flush=True)
    with StateStore(state_url) as store:
        store.end_run(run_id, code)
    return code


def follow(
    job: JobSpec,
    run_id: str | None,
    emit: Callable[[str], None],
    *,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> RunRecord:
    """Emit the run's log lines as they come until it ended or died; its final record.

    ``StateError`` when the job has no such detached run, or on ``timeout_s``.
    """
    with StateStore(job.state_url(), create=False) as store:
        run = store.get_run(job.job_id, run_id)
        if run is None:
            raise StateError(
                f"job={job.job_id}: expected a detached run"
                + (f" run_id={run_id}" if run_id else "") + ", found none",
                hint="start one with `seamline run JOB --detach`; `seamline status JOB` lists them",
            )  # fmt: skip
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        offset = 0
        while True:
            offset = _emit_new(Path(run.log_path), offset, emit)
            if run.state in ("ended", "died"):
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise StateError(
                    f"job={job.job_id} run_id={run.run_id}: still running after {timeout_s}s",
                    hint="wait again, or look at its log: " + run.log_path,
                )
            time.sleep(poll_s)
            refreshed = store.get_run(job.job_id, run.run_id)
            assert refreshed is not None
            run = refreshed


def _emit_new(path: Path, offset: int, emit: Callable[[str], None]) -> int:
    """Emit the complete lines of ``path`` after ``offset``; the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    end = data.rfind(b"\n") + 1
    for line in data[:end].decode("utf-8", "replace").splitlines():
        emit(line)
    return offset + end


def wait_exit_code(run: RunRecord) -> int:
    """The exit code ``seamline wait`` ends with: the run's, or 2 when it died unrecorded."""
    return int(ExitCode.ERROR) if run.exit_code is None else run.exit_code


def main(argv: Sequence[str]) -> None:
    """``python -m coordinator.run.detach JOB_FILE RUN_ID [RUN OPTIONS...]``."""
    if len(argv) < 2:
        print("usage: python -m coordinator.run.detach JOB_FILE RUN_ID [options]", file=sys.stderr)
        sys.exit(int(ExitCode.USAGE))
    sys.exit(supervise(argv[0], argv[1], argv[2:]))


if __name__ == "__main__":
    main(sys.argv[1:])
