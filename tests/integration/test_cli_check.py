"""``seamline check JOB``: validates the job and reaches what it needs, writing nothing."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import job_toml, produce, seamline, write_job

pytestmark = pytest.mark.integration


def _lines(stdout: str) -> dict[str, str]:
    return {line[5:].split(":", 1)[0]: line for line in stdout.splitlines()}


def test_check_passes_on_a_good_job_and_writes_nothing(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(2)
    produce(kafka_bootstrap, topic, {0: 3, 1: 4})
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap))
    res = seamline("check", str(job))
    assert res.returncode == 0, (res.stdout, res.stderr)
    lines = _lines(res.stdout)
    assert list(lines) == ["job file", "broker", "archive", "table", "state"]
    assert all(line.startswith("ok   ") for line in lines.values()), res.stdout
    assert f"topic={topic} partitions=2 offsets below now=7" in lines["broker"]
    assert "none yet" in lines["state"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.toml"]  # nothing written


def test_check_reports_an_unreachable_broker_and_an_unowned_topic(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    job = write_job(tmp_path, job_toml("orders", dead))
    res = seamline("check", str(job), "--timeout", "2")
    assert res.returncode == ExitCode.ERROR, (res.stdout, res.stderr)
    assert _lines(res.stdout)["broker"].startswith("FAIL broker:")
    assert _lines(res.stdout)["table"].startswith("ok   ")  # the other checks still ran

    topic = kafka_topic(1)
    produce(kafka_bootstrap, topic, {0: 2})
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, extra="[history]\nkafka = false\n"))
    res = seamline("check", str(job))
    assert res.returncode == ExitCode.CONFIG, (res.stdout, res.stderr)
    assert "history.kafka=false expects a topic with no retained records" in res.stdout
    assert not (tmp_path / ".seamline").exists()
