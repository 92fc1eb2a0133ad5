"""Two real ``seamline run`` processes on one job: the second is refused by the lease and
names the first; every slice is executed by the first only (issue 12 item 7)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import job_toml, produce, seamline, write_job
from tests.integration.test_coordinator_resume import (
    EXECUTOR,
    exec_env,  # noqa: F401  (fixture)
    lines,
    procs,  # noqa: F401  (fixture)
    start_run,
)

pytestmark = pytest.mark.integration


def wait_for_executions(exec_dir: Path, proc: subprocess.Popen[str]) -> None:
    """Until the first coordinator's workers started a slice (it holds the lease by then)."""
    for _ in range(1200):
        if lines(exec_dir / "executions.log") or proc.poll() is not None:
            break
        proc_wait(proc, 0.1)
    assert lines(exec_dir / "executions.log"), proc.communicate()[1]


def proc_wait(proc: subprocess.Popen[str], seconds: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(seconds)


def test_second_coordinator_is_refused_naming_the_first_and_runs_nothing(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    exec_env: dict[str, str],  # noqa: F811
    procs: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    topic = kafka_topic(1)
    produce(kafka_bootstrap, topic, {0: 20})
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, slice_records=5))
    exec_dir = Path(exec_env["SEAMLINE_TEST_EXEC_DIR"])
    gate = tmp_path / "gate"  # the first coordinator's slices wait until it exists
    env = {**exec_env, "SEAMLINE_TEST_EXEC_SLEEP": "0.1", "SEAMLINE_TEST_EXEC_GATE": str(gate)}
    first = start_run(job, env)
    procs.append(first)
    wait_for_executions(exec_dir, first)
    second = seamline("run", str(job), "--executor", EXECUTOR, "--output", "json", env=env)
    assert second.returncode == ExitCode.ERROR, second.stdout + second.stderr
    assert (
        f"another coordinator (pid={first.pid}, host={socket.gethostname()}, since="
        in second.stderr
    )
    assert "is running job=orders" in second.stderr and "--takeover" in second.stderr
    gate.touch()
    out, err = first.communicate(timeout=180)
    assert first.returncode == ExitCode.NOT_RECONCILED, err  # all committed, not reconciled
    report = json.loads(out)
    assert (report["committed"], report["total"], report["failed"]) == (4, 4, [])
    started = Counter(e[0] for e in lines(exec_dir / "executions.log"))
    assert sorted(started.values()) == [1, 1, 1, 1]  # no slice ran twice: the second ran none
    pids = {e[3] for e in lines(exec_dir / "executions.log")}
    assert len(pids) <= 2  # the first coordinator's workers only (concurrency 2)
    status = json.loads(seamline("status", str(job), "--output", "json").stdout)
    assert status["counts"] == {"committed": 4}
