"""Worker processes die with their coordinator, and a killed worker is a retried slice.

Real broker, real Lance table, ``seamline run`` as a subprocess with the real executor slowed
down (tests/integration/slow_executor.py) so that processes can be killed mid-slice. Every
check of the outcome reads the table itself: each source record exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import lance
import pytest

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import REPO, SEAMLINE, job_toml, produce, seamline, write_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW = "tests.integration.slow_executor:execute"
PER_PARTITION = {0: 20, 1: 20, 2: 20}  # 12 slices of 5 records


def start_run(job: Path, exec_dir: Path, *, executor: str = SLOW) -> subprocess.Popen[str]:
    env = {"PYTHONPATH": str(REPO), "SEAMLINE_TEST_EXEC_DIR": str(exec_dir)}
    return subprocess.Popen(
        [SEAMLINE, "run", str(job), "--executor", executor, "--output", "json"],
        cwd=REPO,
        env={**os.environ, **env, "SEAMLINE_TEST_EXEC_SLEEP": "1.0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so cleanup never touches pytest
    )


def stat_of(pid: int) -> tuple[str, int] | None:
    """``(state, parent pid)`` of a process from /proc, ``None`` once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def children_of(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := stat_of(int(entry.name))) and st[1] == pid:
            out.add(int(entry.name))
    return out


def alive(pid: int) -> bool:
    st = stat_of(pid)
    return st is not None and st[0] != "Z"  # a zombie has exited (only its reaping is left)


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {what} within {timeout_s}s")
        time.sleep(0.05)


def started(exec_dir: Path) -> list[tuple[str, int, int]]:
    path = exec_dir / "started.log"
    rows = path.read_text().splitlines() if path.exists() else []
    return [(sid, int(a), int(pid)) for sid, a, pid in (r.split() for r in rows)]


def table_lineage(tmp_path: Path) -> Counter[tuple[int, int]]:
    """``(partition, offset)`` of every row in the Lance table, with multiplicity."""
    cols = lance.dataset(str(tmp_path / "table.lance")).to_table(
        columns=["_kafka_partition", "_kafka_offset"]
    )
    return Counter(zip(*(cols[c].to_pylist() for c in cols.column_names), strict=True))


def every_record_once() -> Counter[tuple[int, int]]:
    return Counter({(p, o): 1 for p, n in PER_PARTITION.items() for o in range(n)})


def test_kill_9_of_the_coordinator_takes_its_workers_with_it_then_resume_is_exact(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    exec_dir: Path,
    procs: list[subprocess.Popen[str]],
) -> None:
    topic = kafka_topic(3)
    produce(kafka_bootstrap, topic, PER_PARTITION)
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, slice_records=5))
    run = start_run(job, exec_dir)
    procs.append(run)
    wait_until(lambda: len({pid for *_, pid in started(exec_dir)}) >= 2, 120, "two busy workers")
    workers = {pid for *_, pid in started(exec_dir)}
    children = children_of(run.pid)
    # warm workers: forks of the coordinator's fork server, not the coordinator's children
    servers = {st[1] for pid in workers if (st := stat_of(pid))}
    assert len(servers) == 1 and servers <= children, (servers, children)
    assert workers <= children_of(servers.pop())
    os.kill(run.pid, signal.SIGKILL)  # the coordinator only, not its process group
    assert run.wait(30) == -signal.SIGKILL
    gone = children | workers  # the fork server, the workers, anything else it started
    wait_until(lambda: not any(alive(pid) for pid in gone), 10, "its processes to die")
    assert len(started(exec_dir)) < 12  # killed mid-run

    resumed = seamline("run", str(job), "--output", "json")
    assert resumed.returncode == ExitCode.OK, resumed.stderr[-3000:]
    report = json.loads(resumed.stdout)
    assert (report["committed"], report["total"], report["reconciled"]) == (12, 12, True)
    assert table_lineage(tmp_path) == every_record_once()


def test_a_killed_worker_is_retried_and_the_run_completes_exactly_once(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    exec_dir: Path,
    procs: list[subprocess.Popen[str]],
) -> None:
    topic = kafka_topic(3)
    produce(kafka_bootstrap, topic, PER_PARTITION)
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, slice_records=5))
    run = start_run(job, exec_dir)
    procs.append(run)
    wait_until(lambda: len(started(exec_dir)) >= 3, 120, "a third slice to start")
    victim_slice, _, victim = started(exec_dir)[-1]  # the slice started last: mid-sleep
    os.kill(victim, signal.SIGKILL)  # as the OOM killer would, mid-slice
    out, err = run.communicate(timeout=300)
    assert run.returncode == ExitCode.OK, err[-3000:]
    report = json.loads(out)
    assert (report["committed"], report["failed"], report["reconciled"]) == (12, [], True)
    assert report["retries"] >= 1
    attempts = Counter(sid for sid, *_ in started(exec_dir))
    assert attempts[victim_slice] >= 2  # the killed slice ran again
    assert table_lineage(tmp_path) == every_record_once()
