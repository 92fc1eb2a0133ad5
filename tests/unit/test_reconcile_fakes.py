"""The reconciler end to end on the in-memory fakes: a clean load reconciles to zero, and each
injected corruption (loss, duplicate, phantom, overlap) is counted as its own kind.

The same behaviours are proven on a real broker and real tables in
``tests/integration/test_reconcile_mutations.py``; these run in milliseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from coordinator.core import lineage
from coordinator.core.errors import SourceDataLossError
from coordinator.core.jobspec import JobSpec, parse_job
from coordinator.core.values import (
    CommitToken,
    Cut,
    Epoch,
    Offset,
    OffsetRange,
    PartitionCut,
    PartitionId,
    Side,
    Slice,
)
from coordinator.plan.planner import check_retention, kafka_slices
from reconcile.model import ReconcileReport
from reconcile.run import reconcile_job
from stream.decode.json import decode_batch
from stream.decode.transform import identity
from tests.fakes.kafka import FakeTopic
from tests.fakes.table import FakeTable

HWM = 30  # the cut: history owns [0, 30) of each partition, live owns [30, end)
SLICE = 10
T0 = datetime(2024, 3, 1, tzinfo=UTC)
FAILING = ("lost", "in_flight", "gap", "duplicated", "overlap", "phantom", "wrong_side")


def _job(tmp_path: Path) -> JobSpec:
    doc = {
        "job": {"id": "fake"},
        "stream": {"bootstrap": "127.0.0.1:1", "topic": "orders"},
        "schema": {
            "fields": {"order_id": "int64", "amount": "float64", "ts": "timestamp_ms"},
            "required": ["order_id"],
            "event_time": "ts",
        },
        "table": {"format": "lance", "uri": str(tmp_path / "unused.lance")},
        "backfill": {"slice_records": SLICE},
    }
    return parse_job(doc, base_dir=tmp_path, default_id="fake")


class World:
    """A 2-partition topic with holes, its cut and plan, and a table loaded exactly once."""

    def __init__(self, job: JobSpec) -> None:
        self.job = job
        self.topic = FakeTopic(job.schema_.arrow_schema())
        for p in (0, 1):
            for i in range(45):
                if i % 7 == 3:
                    self.topic.skip(p)  # a transaction marker: an offset without a record
                else:
                    doc = {"order_id": 1000 * p + i, "amount": i / 4, "ts": 1_709_251_200_000 + i}
                    self.topic.produce(p, doc, timestamp_ms=1_709_251_200_000 + i)
        parts = tuple(PartitionCut(PartitionId(p), Offset(0), Offset(HWM)) for p in (0, 1))
        self.cut = Cut("fake", "orders", parts, T0, Epoch(1))
        self.slices: list[Slice] = kafka_slices(parts, SLICE)
        self.table = FakeTable(job.schema_.arrow_schema(), "ts", key=job.table.key)
        self.table.ensure_table()

    def rows(self, rng: OffsetRange, side: Side) -> pa.Table:
        rows, bad = decode_batch(self.topic.messages(rng), self.topic.schema, identity, side)
        assert bad == []
        return rows

    def load(self) -> None:
        """Every history slice, then the live side in batches of 5 offsets."""
        for s in self.slices:
            rng = s.scope.ranges[0]
            tok = CommitToken("fake", s.slice_id, 1, Epoch(1), "backfill", (rng,))
            self.table.write_slice(s.scope, self.rows(rng, "backfill"), tok)
        end = self.topic.ends([0])[0]
        for p in (0, 1):
            for a in range(HWM, end, 5):
                rng = OffsetRange(PartitionId(p), Offset(a), Offset(min(a + 5, end)))
                tok = CommitToken("fake", f"live-{p}-{a}", 1, Epoch(1), "live", (rng,))
                self.table.append_live(self.rows(rng, "live"), tok)

    def reconcile(self) -> ReconcileReport:
        return reconcile_job(
            self.job, self.cut, self.slices, quarantine={}, sink=self.table, source=self.topic
        )

    def row_at(self, partition: int, offset: int, side: Side) -> pa.Table:
        """The row a writer would write for one offset, as ``side``."""
        return self.rows(
            OffsetRange(PartitionId(partition), Offset(offset), Offset(offset + 1)), side
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(_job(tmp_path))
    w.load()
    return w


def _failing(report: ReconcileReport) -> dict[str, int]:
    totals = report.totals()
    return {k: totals[k] for k in FAILING if totals[k]}


def test_a_clean_table_reconciles_with_zero_counts(world: World) -> None:
    report = world.reconcile()
    assert report.reconciled
    assert _failing(report) == {}
    records = sum(len(world.topic.offsets(p)) for p in (0, 1))
    assert sum(p.source_records for p in report.partitions) == records == 78
    assert sum(p.table_rows for p in report.partitions) == records
    assert report.totals()["mismatched_slices"] == 0
    kinds = {s.kind for s in report.slices}
    assert kinds == {"history", "live"}  # both sides compared slice by slice


def test_a_lost_record_is_counted_as_lost(world: World) -> None:
    s = world.slices[1]  # partition 0, offsets [10, 20)
    rng = s.scope.ranges[0]
    rows = world.rows(rng, "backfill")
    dropped = rows.filter(pa.compute.not_equal(rows[lineage.OFFSET], 12))
    tok = CommitToken("fake", s.slice_id, 2, Epoch(1), "backfill", (rng,))
    world.table.write_slice(s.scope, dropped, tok)
    report = world.reconcile()
    assert not report.reconciled
    assert _failing(report) == {"lost": 1}
    assert [m.slice_id for m in report.mismatched] == [s.slice_id]
    drill = report.mismatched[0].drilldown
    assert drill is not None and drill.total == 1  # the drill-down names the one lost row
    cov = report.partitions[0]
    assert (cov.partition, cov.lost) == (0, 1)


def test_a_duplicated_row_is_counted_as_duplicated(world: World) -> None:
    world.table.inject(world.row_at(1, 5, "backfill"))
    report = world.reconcile()
    assert not report.reconciled
    assert _failing(report) == {"duplicated": 1}
    assert report.partitions[1].duplicated == 1


def test_a_phantom_row_is_counted_as_phantom(world: World) -> None:
    hole = 3  # i % 7 == 3: no record at offset 3
    assert hole not in world.topic.offsets(0)
    phantom = world.row_at(0, 2, "backfill").set_column(
        list(world.table.schema.names).index(lineage.OFFSET),
        world.table.schema.field(lineage.OFFSET),
        pa.array([hole], pa.int64()),
    )
    world.table.inject(phantom)
    report = world.reconcile()
    assert not report.reconciled
    assert _failing(report) == {"phantom": 1}


def test_an_offset_written_by_both_sides_is_counted_as_overlap(world: World) -> None:
    world.table.inject(world.row_at(0, HWM + 2, "backfill"))  # live owns it and wrote it
    report = world.reconcile()
    assert not report.reconciled
    failing = _failing(report)
    assert failing["overlap"] == 1
    assert failing == {"overlap": 1, "wrong_side": 1}  # a backfill row above the cut
    assert report.partitions[0].overlap == 1


def test_the_fake_topic_cut_and_retention_loss(tmp_path: Path) -> None:
    w = World(_job(tmp_path))
    cut = w.topic.take_cut("fake", [0, 1])
    assert [(p.partition, p.log_start, p.hwm) for p in cut.partitions] == [(0, 0, 45), (1, 0, 45)]
    slices = kafka_slices(cut.partitions, SLICE)
    w.topic.delete_before(1, 12)
    starts = {PartitionId(p): Offset(lo) for p, (lo, _) in w.topic.watermarks([0, 1]).items()}
    with pytest.raises(SourceDataLossError, match=r"partition=1 offsets=\[10,12\)"):
        check_retention(cut, slices, starts, done=["k-p1-000000000-000000010"])
    unit = w.topic.read([OffsetRange(PartitionId(1), Offset(0), Offset(13))])
    assert unit.offsets.tolist() == [12]  # offsets 0-11 are gone
