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
