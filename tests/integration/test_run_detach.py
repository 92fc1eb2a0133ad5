"""``seamline run --detach`` / ``seamline wait`` / ``seamline status`` on real Kafka and a real
Iceberg table: the run id comes back at once, a second run while the detached one runs is
refused (both a plain and a detached one), ``wait`` follows the log to the end and exits with
the run's code, and the table holds exactly the history."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import (
    ZERO,
    counts,
    job_path,
    json_out,
    load_history,
    seamline,
    table_rows,
    write_job,
)

pytestmark = pytest.mark.integration

SLOW = "tests.integration.slow_executor:execute"


def test_a_detached_run_is_followed_to_its_end_and_a_second_run_is_refused(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(tmp_path, kafka_bootstrap, topic, archive_n=60, topic_n=60)
    job = write_job(tmp_path, "iceberg", kafka_bootstrap, topic, slice_records=10)
    exec_dir = tmp_path / "exec"
    exec_dir.mkdir()
    monkeypatch.setenv("SEAMLINE_TEST_EXEC_DIR", str(exec_dir))
    monkeypatch.setenv("SEAMLINE_TEST_EXEC_SLEEP", "0.1")
    gate = tmp_path / "gate"  # the detached run's slices wait until it exists
    monkeypatch.setenv("SEAMLINE_TEST_EXEC_GATE", str(gate))

    t0 = time.monotonic()
    res = seamline("run", job_path(job), "--detach", "--executor", SLOW, "--output", "json")
    took = time.monotonic() - t0
    assert res.returncode == ExitCode.OK, res.stderr
    started = json.loads(res.stdout)
    run_id, pid = started["run_id"], started["pid"]
    try:
        assert started["state"] == "running" and pid > 0, started
        log_path = Path(started["log_path"])
        assert log_path.parent == tmp_path / "runs", "the log sits beside the state (state.db)"
        assert os.getsid(pid) == pid, "the detached process leads its own session"

        deadline = time.monotonic() + 120
        while not (exec_dir / "started.log").exists():  # its worker started a slice: leased
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        plain = seamline("run", job_path(job), "--output", "json")
        assert plain.returncode == ExitCode.ERROR, plain.stdout + plain.stderr
        assert "another coordinator" in plain.stderr and "is running job=e2e" in plain.stderr
        second = seamline("run", job_path(job), "--detach")
        assert second.returncode == ExitCode.ERROR, second.stdout + second.stderr
        assert f"detached run run_id={run_id}" in second.stderr and "still running" in second.stderr

        status = json_out(seamline("status", job_path(job), "--output", "json"))
        mine = status["runs"][0]
        assert (mine["run_id"], mine["state"], mine["pid"]) == (run_id, "running", pid)
        text = seamline("status", job_path(job)).stdout
        assert f"detached run={run_id} running pid={pid}" in text and str(log_path) in text

        gate.touch()
        waited = seamline("wait", job_path(job), run_id)
        assert waited.returncode == ExitCode.OK, waited.stdout[-3000:] + waited.stderr[-2000:]
        assert "backfill: 9 slices" in waited.stdout, "wait prints the run's progress lines"
        outcome = json.loads(next(ln for ln in waited.stdout.splitlines() if ln.startswith("{")))
        assert outcome["reconciled"] is True and outcome["exit_code"] == 0, outcome
        assert counts(outcome["reconcile"]) == ZERO, outcome
        assert f"run_id={run_id} ended exit_code=0" in waited.stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # only if the test failed before the run ended
    print(f"detach returned in {took:.2f}s")

    status = json_out(seamline("status", job_path(job), "--output", "json"))
    mine = status["runs"][0]
    assert (mine["state"], mine["exit_code"]) == ("ended", 0), mine
    assert status["counts"] == {"reconciled": status["slices_total"]}
    rows = table_rows(job)
    archive = rows.filter(pc.equal(rows["_seamline_source"], "archive"))
    kafka = rows.filter(pc.equal(rows["_seamline_source"], "kafka"))
    assert sorted(archive["order_id"].to_pylist()) == sorted(history.archive["order_id"].to_pylist())
    assert sorted(kafka["order_id"].to_pylist()) == sorted(history.topic["order_id"].to_pylist())
    again = seamline("wait", job_path(job), "--output", "json")  # the newest run, ended
    assert again.returncode == ExitCode.OK and json.loads(again.stdout)["run_id"] == run_id


def test_wait_exits_with_the_runs_code_and_a_missing_run_is_an_error(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(1, config={"retention.ms": "-1"})
    job = write_job(tmp_path, "lance", kafka_bootstrap, topic)
    (tmp_path / "archive").mkdir()  # the archive glob matches nothing: the run exits 3
    assert seamline("cut", job_path(job)).returncode == ExitCode.OK
    none = seamline("wait", job_path(job), "nope")
    assert none.returncode == ExitCode.ERROR and "expected a detached run run_id=nope" in none.stderr
    res = seamline("run", job_path(job), "--detach")
    assert res.returncode == ExitCode.OK, res.stderr
    run_id = res.stdout.strip()
    waited = seamline("wait", job_path(job), run_id)
    assert waited.returncode == ExitCode.CONFIG, waited.stdout + waited.stderr
    assert "expected at least one file" in waited.stdout  # the run's error line, from its log


def test_sigterm_cancels_a_detached_run_cleanly_and_wait_says_130(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    load_history(tmp_path, kafka_bootstrap, topic, archive_n=30, topic_n=30)
    job = write_job(tmp_path, "lance", kafka_bootstrap, topic, slice_records=10)
    exec_dir, gate = tmp_path / "exec", tmp_path / "gate"
    exec_dir.mkdir()
    monkeypatch.setenv("SEAMLINE_TEST_EXEC_DIR", str(exec_dir))
    monkeypatch.setenv("SEAMLINE_TEST_EXEC_SLEEP", "0.1")
    monkeypatch.setenv("SEAMLINE_TEST_EXEC_GATE", str(gate))
    res = seamline("run", job_path(job), "--detach", "--executor", SLOW)
    assert res.returncode == ExitCode.OK, res.stderr
    run_id = res.stdout.strip()
    pid = json_out(seamline("status", job_path(job), "--output", "json"))["runs"][0]["pid"]
    try:
        deadline = time.monotonic() + 120
        while not (exec_dir / "started.log").exists():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(pid, signal.SIGTERM)  # the detached process passes it on to the run
        time.sleep(1.0)
        gate.touch()  # in-flight slices finish (idempotent), nothing new is submitted
        waited = seamline("wait", job_path(job), run_id)
        assert waited.returncode == ExitCode.CANCELLED, waited.stdout[-3000:] + waited.stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    status = json_out(seamline("status", job_path(job), "--output", "json"))
    assert (status["runs"][0]["state"], status["runs"][0]["exit_code"]) == ("ended", 130)
    assert status["remaining"], "cancelled before every slice ran"
