"""``seamline run JOB 2> err.log``: progress lines reach a file (not a TTY) while it runs."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import REPO, SEAMLINE, job_toml, produce

pytestmark = pytest.mark.integration


def _wait_for(path: Path, proc: subprocess.Popen[bytes], needle: str) -> str:
    """The file's text once it holds ``needle``; fails if the process ends first."""
    while True:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        assert proc.poll() is None, f"seamline ended (rc={proc.returncode}) first: {text}"
        time.sleep(0.05)


def test_run_writes_progress_lines_to_a_file_while_it_runs(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(2)
    produce(kafka_bootstrap, topic, {0: 10, 1: 10})
    job = tmp_path / "orders.toml"
    job.write_text(job_toml(topic, kafka_bootstrap, slice_records=5))
    exec_dir, gate, err = tmp_path / "exec", tmp_path / "gate", tmp_path / "err.log"
    exec_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEAMLINE_TEST_EXEC_DIR": str(exec_dir),
           "SEAMLINE_TEST_EXEC_GATE": str(gate), "SEAMLINE_TEST_EXEC_SLEEP": "0"}  # fmt: skip
    executor = "tests.integration.test_coordinator_executor:execute"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [SEAMLINE, "run", str(job), "--executor", executor],
            stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, env=env,
        )  # fmt: skip
        try:
            # every slice waits for the gate: the run is still going while we read the file
            running = _wait_for(err, proc, "backfill: 4 slices (0 already committed)")
            assert proc.poll() is None and not (exec_dir / "commits.log").exists()
            gate.touch()
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode in (ExitCode.OK, ExitCode.NOT_RECONCILED), err.read_text()
    assert "\x1b[" not in running  # plain lines, no terminal control codes
    final = [line for line in err.read_text().splitlines() if line.startswith("backfill: 4/4")]
    assert final, err.read_text()
    assert "rows/s" in final[-1] and "retries 0" in final[-1] and "ETA" in final[-1]
    assert b"committed 4/4 slices" in out


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("seamline_run")}  # fmt: skip


def test_run_serves_metrics_on_loopback_while_it_runs(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    import socket

    topic = kafka_topic(2)
    produce(kafka_bootstrap, topic, {0: 10, 1: 10})
    job = tmp_path / "orders.toml"
    job.write_text(job_toml(topic, kafka_bootstrap, slice_records=5))  # 4 slices, concurrency 2
    exec_dir, gate = tmp_path / "exec", tmp_path / "gate"
    exec_dir.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEAMLINE_TEST_EXEC_DIR": str(exec_dir),
           "SEAMLINE_TEST_EXEC_GATE": str(gate), "SEAMLINE_TEST_EXEC_SLEEP": "0"}  # fmt: skip
    executor = "tests.integration.test_coordinator_executor:execute"
    err = tmp_path / "err.log"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [SEAMLINE, "run", str(job), "--executor", executor, "--metrics-port", str(port)],
            stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO, env=env,
        )  # fmt: skip
        try:
            _wait_for(err, proc, "backfill: 4 slices")
            job_label = 'job="orders"'
            while True:  # the runner marks slices running as it submits them
                m = _scrape(port)
                if m.get(f'seamline_run_slices{{{job_label},state="running"}}') == 2:
                    break
                assert proc.poll() is None, err.read_text()
                time.sleep(0.1)
            assert m[f'seamline_run_slices{{{job_label},state="pending"}}'] == 2
            assert m[f'seamline_run_slices{{{job_label},state="committed"}}'] == 0
            assert m[f"seamline_run_rows_total{{{job_label}}}"] == 0
            assert m[f"seamline_run_retries_total{{{job_label}}}"] == 0
            assert m[f"seamline_run_lag_pause_seconds{{{job_label}}}"] == 0
            assert f"seamline_run_rows_per_second{{{job_label}}}" in m
            gate.touch()
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode in (ExitCode.OK, ExitCode.NOT_RECONCILED), err.read_text()
