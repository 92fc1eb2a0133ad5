"""The plugin's ``seamline_job``, ``seamline_producer`` and ``seamline_live`` as a user's own
integration test uses them: real broker, real table, the public API."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import seamline

from coordinator.testing.pytest_plugin import JobFactory, JobFile, LiveProcess, Producer

pytestmark = pytest.mark.integration

TS = 1_704_067_200_000


def _rows(job: JobFile) -> list[int]:
    import lance

    table = lance.dataset(str(job.spec.resolve(str(job.spec.table.uri)))).to_table(columns=["id"])
    return sorted(table.column("id").to_pylist())


def test_history_then_live_with_the_plugin_fixtures_reconciles(
    seamline_job: JobFactory,
    seamline_producer: Producer,
    seamline_live: Callable[[JobFile], LiveProcess],
) -> None:
    job = seamline_job(partitions=2, backfill={"slice_records": 4})
    assert job.path.is_file() and job.spec.backfill.slice_records == 4
    history = seamline_producer.produce(job.topic, [{"id": i, "ts": TS + i} for i in range(10)])
    assert len(history) == 10
    outcome = seamline.run_job(job.spec)
    assert outcome.exit_code == seamline.ExitCode.OK, outcome.to_json()
    assert _rows(job) == list(range(10))

    live = seamline_live(job)
    seamline_producer.produce(job.topic, [{"id": i, "ts": TS + i} for i in range(10, 15)])
    while _rows(job) != list(range(15)):  # read the table itself until live wrote them
        assert live.proc.poll() is None, live.log
        time.sleep(0.2)
    assert live.stop() == 0, live.log
    report = seamline.reconcile_job(job.spec)
    assert report.reconciled, report.totals()
    assert _rows(job) == list(range(15))  # each record exactly once


def test_the_job_factory_writes_iceberg_jobs_and_merges_sections(seamline_job: JobFactory) -> None:
    job = seamline_job("iceberg", topic="given-topic", live={"batch_records": 7},
                       schema={"fields": {"id": "int64", "ts": "timestamp_ms", "name": "string"}})  # fmt: skip
    assert job.topic == "given-topic" == job.spec.stream.topic
    assert job.spec.table.format == "iceberg" and job.spec.live.batch_records == 7
    assert job.spec.live.batch_seconds == 0.3  # defaults kept next to the override
    assert list(job.spec.schema_.fields) == ["id", "ts", "name"]
    with pytest.raises(seamline.ConfigError, match="unknown key"):
        seamline_job(backfill={"slice_recods": 5})
