"""Kill the coordinator (``kill -9``) mid-run, restart it, and prove every slice was committed
exactly once under the original cut; SIGTERM cancels cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.core.errors import ExitCode
from coordinator.core.values import TOKEN_PREFIX
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import REPO, SEAMLINE, job_toml, produce, seamline, write_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXECUTOR = "tests.integration.test_coordinator_executor:execute"


@pytest.fixture
def exec_env(tmp_path: Path) -> dict[str, str]:
    d = tmp_path / "exec"
    d.mkdir()
    return {"SEAMLINE_TEST_EXEC_DIR": str(d), "SEAMLINE_TEST_EXEC_SLEEP": "0.4"}


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:  # the killed coordinator's orphaned workers, if any are left
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def start_run(job: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SEAMLINE, "run", str(job), "--executor", EXECUTOR, "--output", "json"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so cleanup never touches pytest
    )


def lines(path: Path) -> list[list[str]]:
    return [ln.split() for ln in path.read_text().splitlines()] if path.exists() else []


def committed_markers(exec_dir: Path) -> dict[str, int]:
    """The test executor's commits (its ``committed/<slice id>`` markers): slice id -> epoch."""
    return {
        m.name: int(json.loads(m.read_text())[f"{TOKEN_PREFIX}epoch"])
        for m in (exec_dir / "committed").iterdir()
    }


def wait_for_commits(exec_dir: Path, at_least: int, timeout_s: float = 90.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = len(lines(exec_dir / "commits.log"))
        if n >= at_least:
            return n
        time.sleep(0.05)
    raise AssertionError(f"expected {at_least} commits within {timeout_s}s")


def test_kill_9_mid_run_then_resume_commits_every_slice_exactly_once(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    exec_env: dict[str, str],
    procs: list[subprocess.Popen[str]],
) -> None:
    topic = kafka_topic(3)
    produce(kafka_bootstrap, topic, {0: 20, 1: 20, 2: 20})
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, slice_records=5))
    exec_dir = Path(exec_env["SEAMLINE_TEST_EXEC_DIR"])
    first = start_run(job, exec_env)
    procs.append(first)
    done_before_kill = wait_for_commits(exec_dir, 2)
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(30) == -signal.SIGKILL
    assert done_before_kill < 12
    status = json.loads(seamline("status", str(job), "--output", "json").stdout)
    cut_before = status["cut"]
    assert status["counts"].get("committed", 0) < 12
    produce(kafka_bootstrap, topic, {0: 7, 1: 3})  # "now" moves on: the resume must not care

    second = start_run(job, exec_env)
    procs.append(second)
    out, err = second.communicate(timeout=180)
    assert second.returncode == ExitCode.NOT_RECONCILED, err  # all committed, not reconciled
    report = json.loads(out)
    assert (report["committed"], report["total"], report["failed"]) == (12, 12, [])

    after = json.loads(seamline("status", str(job), "--output", "json").stdout)
    assert after["cut"] == cut_before  # the original cut and plan
    assert after["counts"] == {"committed": 12}
    expected = {f"k-p{p}-{a:09d}-{a + 5:09d}" for p in range(3) for a in range(0, 20, 5)}
    assert {s["slice_id"] for s in after["slices"]} == expected
    # The test executor's commit is its O_EXCL marker (one per slice, ever); commits.log is
    # appended just after it, so a kill between the two leaves a committed slice unlogged
    # (which the resume must then find committed, not commit again).
    markers = committed_markers(exec_dir)
    assert set(markers) == expected  # every slice committed
    logged = Counter(c[0] for c in lines(exec_dir / "commits.log"))
    assert set(logged) <= expected and set(logged.values()) == {1}  # none committed twice
    assert set(markers.values()) == {cut_before["epoch"]}  # all under the original cut
    started = Counter(e[0] for e in lines(exec_dir / "executions.log"))
    assert set(started) == expected and all(n in (1, 2) for n in started.values())


def test_sigterm_cancels_cleanly_and_run_resumes(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    exec_env: dict[str, str],
    procs: list[subprocess.Popen[str]],
) -> None:
    topic = kafka_topic(1)
    produce(kafka_bootstrap, topic, {0: 40})
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, slice_records=5))
    exec_dir = Path(exec_env["SEAMLINE_TEST_EXEC_DIR"])
    run = start_run(job, exec_env)
    procs.append(run)
    wait_for_commits(exec_dir, 1)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)
    assert run.returncode == ExitCode.CANCELLED, err
    report = json.loads(out)
    assert report["cancelled"] is True and report["committed"] < 8
    status = json.loads(seamline("status", str(job), "--output", "json").stdout)
    assert "running" not in status["counts"]  # in-flight slices finished and were recorded
    assert status["counts"]["committed"] == report["committed"]
    again = start_run(job, exec_env)
    procs.append(again)
    out, err = again.communicate(timeout=120)
    assert again.returncode == ExitCode.NOT_RECONCILED, err
    assert json.loads(out)["committed"] == 8
    assert set(Counter(c[0] for c in lines(exec_dir / "commits.log")).values()) == {1}
