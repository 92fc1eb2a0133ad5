"""``status``/``plan`` text output scales: 20 rows by default, ``--all`` and ``--failed``,
counts not a dict repr, humanised bytes (real broker, real state store)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import job_toml, produce, seamline, write_job

pytestmark = pytest.mark.integration


def test_status_and_plan_summarise_thirty_slices(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(1)
    produce(kafka_bootstrap, topic, {0: 30})
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, slice_records=1))
    plan = seamline("plan", str(job))
    assert plan.returncode == 0, plan.stderr
    rows = re.findall(r"k-p0-\d+-\d+", plan.stdout)
    assert len(rows) == 20 and "10 more (--all)" in plan.stdout
    assert re.search(r"total kafka\s.*30 slices", plan.stdout) and " B " in plan.stdout
    assert len(re.findall(r"k-p0-\d+-\d+", seamline("plan", str(job), "--all").stdout)) == 30

    status = seamline("status", str(job))
    assert status.returncode == 0, status.stderr
    assert "slices: pending=30" in status.stdout and "{" not in status.stdout
    assert len(re.findall(r"k-p0-\d+-\d+", status.stdout)) == 20
    assert len(re.findall(r"k-p0-\d+-\d+", seamline("status", str(job), "--all").stdout)) == 30
    failed = seamline("status", str(job), "--failed")
    assert failed.returncode == 0 and re.findall(r"k-p0-\d+-\d+", failed.stdout) == []
