"""The Iceberg merge plan reads only what decides and rewrites only what loses, on a real
table: a late archive slice under newer live rows appends (the live files stay untouched),
and a plan made before another writer's commit is re-planned on the new head reading only
the file added since, with the newest version of every key winning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from backfill.sinks.common import conform
from backfill.sinks.iceberg.internals import CachedTransaction
from backfill.sinks.iceberg.merge import MergeFiles, MergePlanner, merge_turn
from backfill.sinks.iceberg.sink import IcebergSink
from coordinator.core.values import (
    CommitToken,
    Epoch,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
)
from stream.decode.base import add_lineage
from tests.integration.test_merge_large_batches import JAN, USER

pytestmark = pytest.mark.integration



def _user(ids: range, amount: float, day: int) -> pa.Table:
    base = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=day)
    return pa.table({"order_id": pa.array(ids, pa.int64()),
                     "amount": pa.array([amount] * len(ids), pa.float64()),
                     "ts": pa.array([base + timedelta(minutes=i) for i in range(len(ids))],
                                    pa.timestamp("ms", tz="UTC"))}, schema=USER)  # fmt: skip


def _kafka(ids: range, amount: float, day: int, start: int, side: str) -> pa.Table:
    n = len(ids)
    return add_lineage(_user(ids, amount, day), pa.array([0] * n, pa.int32()),
                       pa.array(range(start, start + n), pa.int64()), "kafka", side)  # type: ignore[arg-type]  # fmt: skip


def _live(start: int, n: int) -> CommitToken:
    rng = OffsetRange(PartitionId(0), Offset(start), Offset(start + n))
    return CommitToken("job", f"live-{start}", 1, Epoch(1), "live", (rng,))


def _amounts(sink: IcebergSink) -> dict[int, float]:
    rows = sink.scan(columns=["order_id", "amount"])
    got = dict(zip(rows["order_id"].to_pylist(), rows["amount"].to_pylist(), strict=True))
    assert rows.num_rows == len(got), "exactly one row per key"
    return got


def _files(sink: IcebergSink) -> set[str]:
    return {t.file.file_path for t in sink.live_table().table.refresh().scan().plan_files()}


def test_a_late_archive_slice_under_newer_live_rows_appends_and_leaves_live_files_alone(
    iceberg_catalog: SqlCatalog,
) -> None:
    sink = IcebergSink(iceberg_catalog, "t.late", USER, "ts", mode="merge", key=["order_id"])
    sink.ensure_table()
    sink.append_live(_kafka(range(0, 100), 3.0, 40, 0, "live"), _live(0, 100))
    live_files = _files(sink)
    archive = add_lineage(_user(range(0, 200), 1.0, 0), None, None, "archive", "backfill")
    token = CommitToken("job", "jan", 1, Epoch(1), "backfill", ())
    sink.write_slice(Scope("archive", bucket=JAN), archive, token)

    assert live_files <= _files(sink), "the live rows win: their files are not rewritten"
    table = sink.live_table().table.refresh()
    assert table.current_snapshot().summary.operation.value == "append"  # type: ignore[union-attr]
    assert _amounts(sink) == {k: 3.0 if k < 100 else 1.0 for k in range(200)}


def test_a_plan_overtaken_by_a_commit_is_replanned_reading_only_the_new_file(
    iceberg_catalog: SqlCatalog,
) -> None:
    sink = IcebergSink(iceberg_catalog, "t.replan", USER, "ts", mode="merge", key=["order_id"])
    sink.ensure_table()
    archive = add_lineage(_user(range(0, 100), 1.0, 0), None, None, "archive", "backfill")
    sink.write_slice(Scope("archive", bucket=JAN), archive,
                     CommitToken("job", "jan", 1, Epoch(1), "backfill", ()))  # fmt: skip
    assert sink.rule is not None
    # a history Kafka slice (offsets 0..99 of keys 50..149) planned on that head ...
    head = sink.live_table().table.refresh()
    rows = conform(_kafka(range(50, 150), 2.0, 20, 0, "backfill"), head.schema().as_arrow(), "ts")
    planner = MergePlanner(rows, sink.rule, "ts")
    first = planner.plan(head)
    # the archive day holds keys 50..99: read once, rewritten
    assert planner.files_read == 1 and len(first.remove) == 1
    # ... overtaken by live versions of keys 120..129 at newer offsets (another day's file)
    sink.append_live(_kafka(range(120, 130), 3.0, 30, 500, "live"), _live(500, 10))
    table = sink.live_table().table.refresh()
    read_before = planner.files_read
    with CachedTransaction(table) as tx:
        planner.stage(tx, table, {"seamline.test": "replan"})
    # only the new file is read; the archive day's rewrite (same losing rows) is reused
    assert planner.plans == 2 and planner.files_read - read_before == 1
    want = {k: 1.0 for k in range(50)} | {k: 2.0 for k in range(50, 150)}
    assert _amounts(sink) == want | {k: 3.0 for k in range(120, 130)}


class _Overtaken(MergePlanner):
    """Records where each real plan was made; the first one is overtaken by a live commit
    landing right after it (before the merge lock is taken)."""

    def __init__(self, rows: pa.Table, sink: IcebergSink) -> None:
        assert sink.rule is not None
        super().__init__(rows, sink.rule, "ts")
        self.sink, self.phase = sink, "outside"
        self.where: list[str] = []

    def plan(self, table: Table) -> MergeFiles:
        before = self.plans
        out = super().plan(table)
        if self.plans > before:
            self.where.append(self.phase)
            if len(self.where) == 1:  # another writer commits newer versions of 120..129
                self.sink.append_live(_kafka(range(120, 130), 3.0, 30, 500, "live"), _live(500, 10))
        return out


@pytest.mark.parametrize(("rounds", "where"), [(3, ["outside", "outside"]), (0, ["outside", "body"])])
def test_a_plan_overtaken_before_the_lock_is_redone_outside_it_within_bounded_rounds(
    iceberg_catalog: SqlCatalog, rounds: int, where: list[str]
) -> None:
    sink = IcebergSink(iceberg_catalog, f"t.turn{rounds}", USER, "ts", mode="merge",
                       key=["order_id"])  # fmt: skip
    sink.ensure_table()
    archive = add_lineage(_user(range(0, 100), 1.0, 0), None, None, "archive", "backfill")
    sink.write_slice(Scope("archive", bucket=JAN), archive,
                     CommitToken("job", "jan", 1, Epoch(1), "backfill", ()))  # fmt: skip
    table = sink.live_table().table
    rows = conform(_kafka(range(50, 150), 2.0, 20, 0, "backfill"), table.schema().as_arrow(), "ts")
    planner = _Overtaken(rows, sink)
    with merge_turn(planner, table.refresh, rounds) as head:
        planner.phase = "body"  # the merge lock is held from here to the commit
        with CachedTransaction(head) as tx:
            planner.stage(tx, head, {"seamline.test": "turn"})
    # default: the overtaken plan is redone outside the lock, the body only commits;
    # no rounds left: the body re-plans under the lock (the old behaviour, still bounded)
    assert planner.where == where
    want = {k: 1.0 for k in range(50)} | {k: 2.0 for k in range(50, 150)}
    assert _amounts(sink) == want | {k: 3.0 for k in range(120, 130)}
