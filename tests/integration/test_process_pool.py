"""ProcessWorkerPool with real worker processes (no broker, no table): deaths, orphans, the
fork server of warm workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.core.ports import SliceOutcome, SliceResult, SliceTask
from coordinator.core.values import (
    CommitToken,
    Epoch,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
    Slice,
)
from coordinator.run.pool import ProcessWorkerPool
from coordinator.state.store import StateStore
from tests.fakes.executors import StubJob

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def job(tmp_path: Path) -> StubJob:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with StateStore(url) as store:
        store.ensure_job("pool")
    return StubJob("pool", url)


def task(job: StubJob, executor: str, sid: str = "s1", attempt: int = 1) -> SliceTask:
    rng = (OffsetRange(PartitionId(0), Offset(0), Offset(1)),)
    token = CommitToken(job.job_id, sid, attempt, Epoch(1), "backfill", rng)
    return SliceTask(
        f"tests.fakes.executors:{executor}", job, Slice(sid, Scope("kafka", rng)), token
    )


def wait_one(pool: ProcessWorkerPool, timeout_s: float = 120.0) -> SliceOutcome:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = pool.completed(0.5)
        if done:
            assert len(done) == 1
            return done[0]
    raise AssertionError(f"expected an outcome within {timeout_s}s")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_workers_are_warm_forks_of_a_fork_server_with_the_coordinators_environment(
    job: StubJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = ProcessWorkerPool(1)
    assert pool.mp_context == "forkserver"
    try:
        pool.submit(task(job, "preloaded"))
        assert wait_one(pool).result == SliceResult(rows=1, commit=None)  # imported before
        (worker,) = pool.worker_pids()
        server = parent_of(worker)
        assert server != os.getpid() and parent_of(server) == os.getpid()  # our fork server
        pool.shutdown()
        # set after the fork server started: a new worker still sees it (as under spawn)
        monkeypatch.setenv("SEAMLINE_TEST_NUMBER", "42")
        pool.submit(task(job, "env_number", "s2"))
        assert wait_one(pool).result == SliceResult(rows=42, commit=None)
    finally:
        pool.shutdown()


def test_a_killed_worker_comes_back_as_a_retriable_outcome_and_the_pool_recovers(
    job: StubJob,
) -> None:
    pool = ProcessWorkerPool(1)
    try:
        pool.submit(task(job, "die_first"))
        died = wait_one(pool)
        assert died.worker_died and died.retriable and died.slice_id == "s1"
        assert died.error is not None and "BrokenProcessPool" in died.error
        assert pool.deaths == 1 and pool.in_flight() == 0
        pool.submit(task(job, "die_first", attempt=2))  # a fresh executor takes it
        again = wait_one(pool)
        assert again.result is not None and not again.worker_died
        assert again.result.rows in pool.worker_pids()
        pool.submit(task(job, "terminal", "s2"))
        bad = wait_one(pool)
        assert not bad.retriable and bad.error is not None and "ConfigError" in bad.error
    finally:
        pool.shutdown()


def test_shutdown_terminate_kills_busy_workers(job: StubJob) -> None:
    pool = ProcessWorkerPool(2)
    pool.submit(task(job, "sleep", "a"))
    pool.submit(task(job, "sleep", "b"))
    deadline = time.monotonic() + 120
    while len(pool.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = pool.worker_pids()
    assert len(pids) == 2
    pool.shutdown(terminate=True)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)


OWNER = """
import sys, time
from tests.fakes.executors import StubJob
from tests.integration.test_process_pool import task
from coordinator.run.pool import ProcessWorkerPool
pool = ProcessWorkerPool(2)
job = StubJob("pool", sys.argv[1])
pool.submit(task(job, "sleep", "a"))
pool.submit(task(job, "sleep", "b"))
while len(pool.worker_pids()) < 2:
    time.sleep(0.1)
print(" ".join(map(str, sorted(pool.worker_pids()))), flush=True)  # forked by the fork server
time.sleep(600)
"""


def test_workers_die_when_their_owner_is_killed(job: StubJob) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, job.url],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert owner.stdout is not None
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        (server,) = {parent_of(p) for p in pids}  # the workers' OS parent: the fork server
        assert server != owner.pid and parent_of(server) == owner.pid
        owner.kill()  # SIGKILL: no clean-up code of the owner runs
        owner.wait(30)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in [*pids, server]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in pids), "a worker outlived its owner"
        assert not alive(server), "the fork server outlived its owner"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(owner.pid, signal.SIGKILL)
        owner.wait()


EXITS = """
import os
from pathlib import Path
from coordinator.run.pool import ProcessWorkerPool
ProcessWorkerPool(1)  # starts the fork server, whose preload takes seconds
mine = [p for p in Path("/proc").iterdir() if p.name.isdigit()
        and int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()]
print(" ".join(p.name for p in mine if b"forkserver" in (p / "cmdline").read_bytes()))
"""


def test_a_coordinator_that_exits_takes_its_fork_server_along(
    job: StubJob, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    with out.open("w") as fh:  # not a pipe: the fork server holds the coordinator's stdout too
        code = subprocess.call(
            [sys.executable, "-c", EXITS],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=fh,
            timeout=60,
        )
    assert code == 0
    (server,) = [int(p) for p in out.read_text().split()]
    assert not alive(server), "the fork server outlived its coordinator's exit"
