"""Reconcile in one pass (issue 16 item 6) against the per-slice reference path, on a real run:
archive Parquet (three monthly buckets) and a real Kafka topic (three partitions, slices of
100 offsets) backfilled by ``seamline run`` into a real Iceberg or Lance table.

Both paths must give the same report, clean and after the table is damaged (one archive row
and one Kafka row deleted, read back from the table), and the one-pass path must scan the
table once, not once per slice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from backfill.sinks import open_catalog
from backfill.sources.archive import read_archive
from coordinator.core import lineage
from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Cut, Scope, Slice
from coordinator.service import open_reader
from coordinator.state.store import StateStore
from coordinator.testing.pytest_plugin import TopicFactory
from reconcile.model import ReconcileReport
from reconcile.run import reconcile_job
from reconcile.source import KafkaUnits
from tests.integration.test_e2e_support import job_path, load_history, seamline, write_job

pytestmark = pytest.mark.integration

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class CountingReader:
    """The job's table reader, counting scans."""

    def __init__(self, job: JobSpec) -> None:
        self.inner = open_reader(job)
        self.scans = 0

    def scan(self, scope: Scope | None = None, columns: list[str] | None = None) -> pa.Table:
        self.scans += 1
        return self.inner.scan(scope, columns)

    def scan_batches(self) -> Iterator[pa.RecordBatch]:
        self.scans += 1
        yield from self.inner.scan_batches()  # type: ignore[attr-defined]

    def live_offsets(self) -> Any:
        return self.inner.live_offsets()


def _both(job: JobSpec, cut: Cut, slices: list[Slice]) -> Iterator[tuple[ReconcileReport, int]]:
    for one_pass in (True, False):
        reader = CountingReader(job)
        report = reconcile_job(
            job, cut, slices, sink=reader, source=KafkaUnits(job), quarantine={},
            archive=lambda s: read_archive(job, s).counted(), now=NOW, one_pass=one_pass,
        )  # fmt: skip
        yield report, reader.scans


def _delete(job: JobSpec, fmt: str, archive_id: int, kafka_id: int) -> None:
    if fmt == "iceberg":
        from backfill.sinks.scopes import ice_in

        assert job.table.identifier is not None
        table = open_catalog(job).load_table(job.table.identifier)
        table.delete(ice_in("order_id", {archive_id, kafka_id}))
    else:
        lance.dataset(str(job.base_dir / "orders.lance")).delete(
            f"order_id IN ({int(archive_id)}, {int(kafka_id)})"
        )


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_one_pass_equals_the_per_slice_path_clean_and_damaged(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(tmp_path, kafka_bootstrap, topic, archive_n=300, topic_n=600)
    job = write_job(tmp_path, fmt, kafka_bootstrap, topic, slice_records=100)
    res = seamline("run", job_path(job))
    assert res.returncode == ExitCode.OK, res.stderr[-3000:]
    with StateStore(job.state_url(), create=False) as store:
        cut = store.get_cut(job.job_id)
        slices = [r.slice for r in store.list_slices(job.job_id)]
    assert cut is not None
    archive = sum(s.scope.source == "archive" for s in slices)
    assert archive == 3 and len(slices) - archive == 6

    (fast, fast_scans), (ref, ref_scans) = _both(job, cut, slices)
    assert fast.reconciled and fast.to_json() == ref.to_json()
    assert fast_scans == 1  # the whole table once, batch by batch
    assert ref_scans == len(fast.slices) + 3  # one per unit, one per partition (coverage)

    victim_archive = int(history.archive.column("order_id")[10].as_py())
    victim_kafka = int(history.topic.column("order_id")[20].as_py())
    _delete(job, fmt, victim_archive, victim_kafka)
    left = open_reader(job).scan(columns=["order_id", lineage.SOURCE])
    assert not pc.any(pc.is_in(left["order_id"], pa.array([victim_archive, victim_kafka]))).as_py()

    (fast, _), (ref, _) = _both(job, cut, slices)
    assert not fast.reconciled and fast.to_json() == ref.to_json()
    assert {s.kind for s in fast.mismatched} == {"archive", "history"}
    missing = [r for s in fast.mismatched for r in (s.drilldown.rows if s.drilldown else ())]
    assert sorted(int(r.source["order_id"]) for r in missing if r.source) == sorted(
        [victim_archive, victim_kafka]
    )
