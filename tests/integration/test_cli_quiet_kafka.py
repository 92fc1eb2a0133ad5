"""A broker that is gone gives one error line, not librdkafka's connection-error spam.

``seamline plan`` runs as a real subprocess; the job's bootstrap points at a closed local port,
once for a fresh job and once after the cut was stored on the real broker (the demo's case:
the broker stopped, the stored cut sends ``plan`` straight to counting Kafka slices).
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import job_toml, produce, seamline, write_job

pytestmark = pytest.mark.integration


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def assert_one_quiet_error(stderr: str, expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) < 5, stderr[:2000]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], stderr[:2000]
    assert "rdkafka" not in stderr and "Connection refused" not in stderr, stderr[:2000]


def test_plan_on_a_closed_port_is_one_error_line(tmp_path: Path) -> None:
    bootstrap = closed_port()
    job = write_job(tmp_path, job_toml(f"orders-{uuid.uuid4().hex[:8]}", bootstrap))
    res = seamline("plan", str(job), "--timeout", "3")
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert_one_quiet_error(res.stderr, f"bootstrap={bootstrap}: broker unreachable")
    assert not (tmp_path / ".seamline").exists()


def test_plan_after_the_broker_went_away_is_one_error_line(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(partitions=2)
    produce(kafka_bootstrap, topic, {0: 6, 1: 4})
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap))
    cut = seamline("cut", str(job))
    assert cut.returncode == ExitCode.OK, cut.stderr
    job.write_text(job_toml(topic, closed_port()))  # same job, its broker is gone
    res = seamline("plan", str(job))
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert_one_quiet_error(res.stderr, f"topic={topic} partition=")
