"""``seamline maintain`` end to end on Iceberg: history run, live consumer committing many
small batches from a real topic, then ``maintain`` compacts the small files and expires
snapshots, and ``seamline reconcile`` still finds every record exactly once (0/0/0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backfill.sinks import open_catalog, open_sink
from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import JobSpec
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import (
    ZERO,
    LiveProducer,
    counts,
    ends_of,
    job_path,
    json_out,
    live_consumer,
    load_history,
    seamline,
    table_rows,
    take_cut,
    wait_until,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _data_files(job: JobSpec) -> int:
    table = open_catalog(job).load_table(str(job.table.identifier))
    return len(list(table.scan().plan_files()))


def _caught_up(job: JobSpec, ends: dict[int, int]) -> bool:
    table = {int(p): int(o) for p, o in open_sink(job).live_offsets().items()}
    return all(table.get(p) == e for p, e in ends.items())


def test_maintain_compacts_a_live_table_and_reconcile_stays_zero(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(tmp_path, kafka_bootstrap, topic, archive_n=90, topic_n=120)
    job = write_job(tmp_path, "iceberg", kafka_bootstrap, topic)
    take_cut(job)
    producer = LiveProducer(kafka_bootstrap, topic, first_id=1_000_000, per_second=20)
    with live_consumer(job):
        run = seamline("run", job_path(job), "--output", "json")
        assert run.returncode == ExitCode.OK, run.stderr
        producer.start()
        wait_until(lambda: len(producer.delivered) >= 60, 120, "60 live records produced")
        everything = {**history.delivered, **producer.finish()}
        wait_until(lambda: _caught_up(job, ends_of(everything)), 120, "live to catch up")
    rows_before = table_rows(job)
    files_before = _data_files(job)

    out = seamline("maintain", job_path(job), "--min-age", "0", "--output", "json")
    assert out.returncode == ExitCode.OK, out.stderr
    doc = json_out(out)
    assert doc["job"] == "e2e" and doc["files_removed"] > doc["files_added"] > 0, doc
    assert _data_files(job) == files_before - doc["files_removed"] + doc["files_added"]
    assert table_rows(job).equals(rows_before)  # every row and lineage column unchanged

    rec = seamline("reconcile", job_path(job), "--output", "json")
    assert rec.returncode == ExitCode.OK, rec.stdout + rec.stderr
    report = json_out(rec)
    assert report["reconciled"] is True
    assert counts(report["totals"]) == ZERO, report


def test_maintain_on_a_missing_table_says_so(tmp_path: Path) -> None:
    job = write_job(tmp_path, "iceberg", "127.0.0.1:1", "nothing")
    out = seamline("maintain", job_path(job))
    assert out.returncode == ExitCode.ERROR, out.stderr
    assert "job=e2e" in out.stderr and "maintenance failed" in out.stderr
