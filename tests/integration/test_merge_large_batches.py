"""Merge batches of more than 200 keys (the key-range read, and the range rewrite that
re-adds the range's other rows unchanged) keep one row per key holding its newest version,
on a real Iceberg table and a real Lance dataset, history slices and live batches alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from backfill.sinks.iceberg.sink import IcebergSink
from backfill.sinks.lance.sink import LanceSink
from coordinator.core.values import (
    CommitToken,
    Epoch,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
    TimeBucket,
)
from stream.decode.base import add_lineage

pytestmark = pytest.mark.integration

USER = pa.schema([pa.field("order_id", pa.int64()), pa.field("amount", pa.float64()),
                  pa.field("ts", pa.timestamp("ms", tz="UTC"))])  # fmt: skip
JAN = TimeBucket(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))


def _user(ids: list[int], amount: float, day: int) -> pa.Table:
    base = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=day)
    return pa.table({"order_id": pa.array(ids, pa.int64()),
                     "amount": pa.array([amount] * len(ids), pa.float64()),
                     "ts": pa.array([base + timedelta(minutes=i) for i in range(len(ids))],
                                    pa.timestamp("ms", tz="UTC"))}, schema=USER)  # fmt: skip


def _kafka(ids: list[int], amount: float, day: int, p: int, side: str) -> pa.Table:
    n = len(ids)
    return add_lineage(_user(ids, amount, day), pa.array([p] * n, pa.int32()),
                       pa.array(range(n), pa.int64()), "kafka", side)  # type: ignore[arg-type]


def _token(slice_id: str, side: str, rng: OffsetRange | None = None) -> CommitToken:
    return CommitToken("job", slice_id, 1, Epoch(1), side, (rng,) if rng else ())  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_large_merge_batches_keep_the_newest_version_of_every_key(
    fmt: str, iceberg_catalog: SqlCatalog, tmp_path: Path
) -> None:
    sink: IcebergSink | LanceSink
    if fmt == "iceberg":
        sink = IcebergSink(iceberg_catalog, "t.merge", USER, "ts", mode="merge", key=["order_id"])
    else:
        sink = LanceSink(str(tmp_path / "t.lance"), USER, "ts", mode="merge", key=["order_id"])
    sink.ensure_table()
    archive = add_lineage(_user(list(range(600)), 1.0, 0), None, None, "archive", "backfill")
    sink.write_slice(Scope("archive", bucket=JAN), archive, _token("a", "backfill"))
    # 300 Kafka rows: corrections of even keys 0..298 and new keys 1000..1149 (the range
    # [0, 1149] holds the 600 archive rows: rewritten, the odd and upper keys unchanged)
    ids = list(range(0, 300, 2)) + list(range(1000, 1150))
    rng = OffsetRange(PartitionId(0), Offset(0), Offset(300))
    sink.write_slice(Scope("kafka", (rng,)), _kafka(ids, 2.0, 40, 0, "backfill"),
                     _token("k", "backfill"))  # fmt: skip
    # live corrects odd keys 1..499 (250 keys), then the same Kafka slice runs again (a
    # retried slice): its records are older than nothing live holds, the table must not move
    live_ids = list(range(1, 500, 2))
    live_rng = OffsetRange(PartitionId(1), Offset(0), Offset(250))
    sink.append_live(_kafka(live_ids, 3.0, 50, 1, "live"), _token("l", "live", live_rng))
    sink.write_slice(Scope("kafka", (rng,)), _kafka(ids, 2.0, 40, 0, "backfill"),
                     _token("k2", "backfill"))  # fmt: skip

    rows = sink.scan(columns=["order_id", "amount"])
    got = dict(zip(rows["order_id"].to_pylist(), rows["amount"].to_pylist(), strict=True))
    assert rows.num_rows == len(got), "exactly one row per key"
    want = {k: 1.0 for k in range(600)}
    want |= {k: 2.0 for k in ids}
    want |= {k: 3.0 for k in live_ids}
    assert got == want
    assert pc.sum(pc.equal(rows["amount"], 1.0)).as_py() == 600 - 150 - 250
