"""Offset-conditional live appends on a real Iceberg table (SQL catalog)."""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
import pytest

from backfill.sinks.iceberg.live import IcebergLiveTable
from coordinator.core.errors import CommitConflictError
from coordinator.core.lineage import with_lineage
from coordinator.core.values import CommitToken, Epoch, Offset, OffsetRange, PartitionId
from stream.decode.base import RawMessage
from stream.decode.json import decode_batch
from stream.decode.transform import identity

pytestmark = pytest.mark.integration

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False)])


def _table(catalog: Any) -> Any:
    catalog.create_namespace("live")
    return catalog.create_table("live.t", schema=with_lineage(SCHEMA))


def _batch(p: int, start: int, end: int) -> tuple[pa.Table, CommitToken]:
    msgs = [RawMessage(p, o, f'{{"id": {o}}}'.encode()) for o in range(start, end)]
    data, bad = decode_batch(msgs, SCHEMA, identity, "live")
    assert not bad
    rng = OffsetRange(PartitionId(p), Offset(start), Offset(end))
    return data, CommitToken("j", f"live:{p}@{start}-{end}", 1, Epoch(1), "live", (rng,))


def test_same_range_from_two_writers_commits_once(iceberg_catalog: Any) -> None:
    table = _table(iceberg_catalog)
    writers = [IcebergLiveTable(iceberg_catalog.load_table("live.t")) for _ in range(2)]
    outcomes: list[str] = []
    for round_ in range(8):
        start = round_ * 10
        barrier = threading.Barrier(2)

        def run(w: IcebergLiveTable, start: int = start, barrier: Any = barrier) -> None:
            data, token = _batch(0, start, start + 10)
            barrier.wait()
            try:
                w.append_live(data, token)
                outcomes.append("ok")
            except CommitConflictError:
                outcomes.append("conflict")

        threads = [threading.Thread(target=run, args=(w,)) for w in writers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert outcomes.count("ok") == 8 and outcomes.count("conflict") == 8
    table.refresh()
    offsets = table.scan(selected_fields=("_kafka_offset",)).to_arrow()["_kafka_offset"]
    assert sorted(offsets.to_pylist()) == list(range(80))
    assert writers[0].live_offsets() == {0: 80}


def test_disjoint_partitions_never_clobber_each_others_offsets(iceberg_catalog: Any) -> None:
    _table(iceberg_catalog)
    writers = [IcebergLiveTable(iceberg_catalog.load_table("live.t")) for _ in range(2)]

    def run(p: int) -> None:
        for start in range(0, 60, 10):
            data, token = _batch(p, start, start + 10)
            writers[p].append_live(data, token)

    threads = [threading.Thread(target=run, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writers[0].live_offsets() == {0: 60, 1: 60}


def test_offsets_survive_snapshot_expiry(iceberg_catalog: Any) -> None:
    _table(iceberg_catalog)
    w = IcebergLiveTable(
        iceberg_catalog.load_table("live.t"),
        keep_snapshots=3,
        expire_every=5,
        min_snapshot_age_s=0.0,
    )
    w.ensure_maintenance_properties()
    for i in range(20):
        data, token = _batch(i % 2, i // 2 * 10, i // 2 * 10 + 10)
        w.append_live(data, token)
    assert len(w.table.snapshots()) <= 3 + 5
    assert w.live_offsets() == {0: 100, 1: 100}
    assert w.table.scan().to_arrow().num_rows == 200
