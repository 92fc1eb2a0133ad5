"""Lance merge slices scan only the fragments whose key / event-time bounds meet the batch
(``backfill.sinks.lance.merge.FragmentBounds``), and that pruning can never hide a version:
fragments written by another writer (bounds never seen) and fragments rewritten by a
compaction (bounds of files that no longer exist) still take part in the merge, checked by
reading the dataset directly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from backfill.sinks.lance.merge import FragmentBounds
from backfill.sinks.lance.sink import LanceSink
from backfill.sinks.scopes import micros
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
from tests.integration.test_merge_large_batches import JAN, USER

pytestmark = pytest.mark.integration

FEB = TimeBucket(datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))


def _user(ids: range, amount: float, start: datetime) -> pa.Table:
    return pa.table({"order_id": pa.array(ids, pa.int64()),
                     "amount": pa.array([amount] * len(ids), pa.float64()),
                     "ts": pa.array([start + timedelta(minutes=i) for i in range(len(ids))],
                                    pa.timestamp("ms", tz="UTC"))}, schema=USER)  # fmt: skip


def _archive(ids: range, amount: float, bucket: TimeBucket) -> pa.Table:
    return add_lineage(_user(ids, amount, bucket.start), None, None, "archive", "backfill")


def _slice(sink: LanceSink, bucket: TimeBucket, rows: pa.Table, name: str) -> None:
    token = CommitToken("job", name, 1, Epoch(1), "backfill", ())
    sink.write_slice(Scope("archive", bucket=bucket), rows, token)


def _live(sink: LanceSink, ids: range, amount: float, start: int) -> None:
    n = len(ids)
    rows = add_lineage(_user(ids, amount, datetime(2024, 6, 1, tzinfo=UTC)),
                       pa.array([0] * n, pa.int32()), pa.array(range(start, start + n), pa.int64()),
                       "kafka", "live")  # fmt: skip
    rng = OffsetRange(PartitionId(0), Offset(start), Offset(start + n))
    sink.append_live(rows, CommitToken("job", f"live-{start}", 1, Epoch(1), "live", (rng,)))


def test_bounds_select_only_the_fragments_meeting_the_keys_or_the_bucket(tmp_path: Path) -> None:
    uri = str(tmp_path / "b.lance")
    sink = LanceSink(uri, USER, "ts", mode="merge", key=["order_id"])
    sink.ensure_table()
    _slice(sink, JAN, _archive(range(0, 300), 1.0, JAN), "jan")
    _slice(sink, FEB, _archive(range(1000, 1300), 1.0, FEB), "feb")
    ds = lance.dataset(uri)
    bounds = FragmentBounds("order_id", "ts")
    by_keys = bounds.candidates(ds, 1100, 1200, None)
    by_time = bounds.candidates(ds, 5000, 6000, (micros(JAN.start), micros(JAN.end)))
    none = bounds.candidates(ds, 5000, 6000, None)
    ids = {f.fragment_id: set(f.to_table(columns=["order_id"])["order_id"].to_pylist())
           for f in ds.get_fragments()}  # fmt: skip
    assert [ids[f.fragment_id] for f in by_keys] == [set(range(1000, 1300))]
    assert [ids[f.fragment_id] for f in by_time] == [set(range(0, 300))]
    assert none == []


def test_fragments_of_another_writer_and_of_a_compaction_are_never_pruned_away(
    tmp_path: Path,
) -> None:
    uri = str(tmp_path / "m.lance")
    history = LanceSink(uri, USER, "ts", mode="merge", key=["order_id"])
    history.ensure_table()
    live = LanceSink(uri, USER, "ts", mode="merge", key=["order_id"])  # its own bounds
    _slice(history, JAN, _archive(range(0, 300), 1.0, JAN), "jan")  # history caches Jan
    _live(live, range(250, 450), 3.0, 0)  # newer versions of 250..299 and new keys 300..449
    assert live.compact().files_removed > 0  # every fragment rewritten: new data files
    # Feb's keys 350..599: 350..449 are held by the live rows (newer: Kafka beats archive)
    _slice(history, FEB, _archive(range(350, 600), 2.0, FEB), "feb")
    _live(live, range(580, 590), 4.0, 200)  # and the other way round, after the slice
    rows = lance.dataset(uri).to_table(columns=["order_id", "amount"])
    got = dict(zip(rows["order_id"].to_pylist(), rows["amount"].to_pylist(), strict=True))
    assert rows.num_rows == len(got), "exactly one row per key"
    want = ({k: 1.0 for k in range(250)} | {k: 3.0 for k in range(250, 450)}
            | {k: 2.0 for k in range(450, 600)} | {k: 4.0 for k in range(580, 590)})  # fmt: skip
    assert got == want
