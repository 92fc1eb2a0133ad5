"""The table side of a reconciliation in one pass: one scan per Kafka partition and one scan
of every archive bucket at once, instead of one scan per compared unit.

Every scanned row is assigned to the unit that owns it, from its lineage columns (a Kafka row
by ``(_kafka_partition, _kafka_offset)`` against the units' offset ranges, an archive row by
its event time against the units' buckets); rows no unit owns are not compared, exactly as a
per-unit scan would not have returned them. The row hashes (:func:`reconcile.checksum.
row_hashes`) are then grouped by unit with polars: count, the sums of the low and the high
32-bit halves (exact in 64 bits, combined modulo 2^64 afterwards) and the xor. The result per
unit is the very :class:`Checksum` a scan of the unit's scope gives; state is O(units) plus
the one partition being scanned. The same scan yields the partition's lineage offsets and
sides for coverage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core import lineage
from coordinator.core.ports import TableReader
from coordinator.core.values import Offset, OffsetRange, PartitionId, Scope, TimeBucket
from reconcile.checksum import Checksum, hashed_columns, row_hashes
from reconcile.coverage import I64

log = logging.getLogger(__name__)

_MASK = (1 << 64) - 1
_LO = np.uint64(0xFFFFFFFF)
_US = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNIT = "__seamline_unit"


@dataclass
class TablePass:
    """What one pass over the table found: per unit index, per partition."""

    checksums: dict[int, Checksum] = field(default_factory=dict)
    duplicate_keys: dict[int, int] = field(default_factory=dict)
    offsets: dict[int, I64] = field(default_factory=dict)  # coverage: lineage offsets
    live: dict[int, npt.NDArray[np.bool_]] = field(default_factory=dict)  # side == live
    columns: tuple[str, ...] | None = None  # hashed columns of the table
    scans: int = 0

    def add(self, unit: int, value: Checksum) -> None:
        self.checksums[unit] = self.checksums.get(unit, Checksum()) + value


def grouped_checksums(hashes: npt.NDArray[np.uint64], unit: npt.NDArray[np.int64]) -> dict[int, Checksum]:
    """Checksum of the hashes of each unit (``unit < 0``: owned by none, skipped)."""
    frame = pl.DataFrame(
        {"u": unit, "lo": hashes & _LO, "hi": hashes >> np.uint64(32), "h": hashes}
    ).filter(pl.col("u") >= 0)
    agg = frame.group_by("u").agg(
        pl.len().alias("n"), pl.col("lo").sum(), pl.col("hi").sum(), pl.col("h").bitwise_xor()
    )
    out = {}
    for u, n, lo, hi, x in agg.iter_rows():
        out[int(u)] = Checksum(int(n), (int(lo) + (int(hi) << 32)) & _MASK, int(x))
    return out


def assign_offsets(
    offsets: I64, ranges: Sequence[tuple[int, int, int]]
) -> npt.NDArray[np.int64]:
    """Unit index of each offset from disjoint ``(start, end, unit)`` ranges (-1: none)."""
    out = np.full(len(offsets), -1, dtype=np.int64)
    if not ranges or not len(offsets):
        return out
    rs = sorted(ranges)
    starts = np.array([r[0] for r in rs], dtype=np.int64)
    ends = np.array([r[1] for r in rs], dtype=np.int64)
    units = np.array([r[2] for r in rs], dtype=np.int64)
    k = np.searchsorted(starts, offsets, side="right") - 1
    inside = (k >= 0) & (offsets < ends[np.maximum(k, 0)])
    out[inside] = units[k[inside]]
    return out


def disjoint(ranges: Sequence[tuple[Any, Any, int]]) -> bool:
    """True when no two ``(start, end, _)`` ranges overlap."""
    rs = sorted(ranges)
    return all(a[1] <= b[0] for a, b in pairwise(rs))


def scopes_disjoint(scopes: Sequence[Scope]) -> bool:
    """True when no two scopes share an offset of a partition or an instant of a bucket."""
    per_part: dict[int, list[tuple[int, int, int]]] = {}
    for i, scope in enumerate(scopes):
        for r in scope.ranges:
            per_part.setdefault(int(r.partition), []).append((int(r.start), int(r.end), i))
    buckets = [(s.bucket.start, s.bucket.end, i) for i, s in enumerate(scopes) if s.bucket]
    return all(disjoint(rs) for rs in per_part.values()) and disjoint(buckets)


def _accumulate(tp: TablePass, table: pa.Table, unit: npt.NDArray[np.int64]) -> None:
    cols = tuple(hashed_columns(table.schema.names))
    tp.columns = tp.columns or cols
    if table.num_rows:
        for u, value in grouped_checksums(row_hashes(table, cols), unit).items():
            tp.add(u, value)


def kafka_pass(
    tp: TablePass,
    sink: TableReader,
    partition: int,
    scan_end: int,
    ranges: Sequence[tuple[int, int, int]],
) -> None:
    """Scan partition ``partition`` below ``scan_end`` once; checksums per unit, lineage."""
    scope = Scope("kafka", (OffsetRange(PartitionId(partition), Offset(0), Offset(scan_end)),))
    table = sink.scan(scope)
    tp.scans += 1
    offsets = np.asarray(
        pc.fill_null(table.column(lineage.OFFSET), -1).to_numpy(zero_copy_only=False), np.int64
    )
    _accumulate(tp, table, assign_offsets(offsets, ranges))
    tp.offsets[partition] = offsets
    live = pc.equal(table.column(lineage.SIDE), "live").to_numpy(zero_copy_only=False)
    tp.live[partition] = np.asarray(live, np.bool_)


def _micros(table: pa.Table, event_time: str) -> tuple[I64, npt.NDArray[np.bool_]]:
    col = table.column(event_time)
    ns = pa.types.is_timestamp(col.type) and col.type.unit == "ns"
    ts = col.cast(pa.int64()) if ns else col.cast(_US).cast(pa.int64())
    valid = np.asarray(ts.is_valid().to_numpy(zero_copy_only=False), np.bool_)
    values = np.asarray(pc.fill_null(ts, 0).to_numpy(zero_copy_only=False), np.int64)
    return (np.floor_divide(values, 1000) if ns else values), valid


def archive_pass(
    tp: TablePass,
    sink: TableReader,
    event_time: str,
    buckets: Mapping[int, TimeBucket],
    key: Sequence[str],
) -> None:
    """Scan every archive bucket at once (one scope spanning them); checksums per unit and
    the duplicate business keys of each unit."""
    if not buckets:
        return
    span = TimeBucket(
        min(b.start for b in buckets.values()), max(b.end for b in buckets.values())
    )
    table = sink.scan(Scope("archive", bucket=span))
    tp.scans += 1
    at, valid = _micros(table, event_time)
    unit = assign_offsets(at, [(_us(b.start), _us(b.end), u) for u, b in buckets.items()])
    unit[~valid] = -1
    _accumulate(tp, table, unit)
    if key and table.num_rows:
        tp.duplicate_keys.update(_duplicates(table, unit, key))


def _us(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


def _duplicates(
    table: pa.Table, unit: npt.NDArray[np.int64], key: Sequence[str]
) -> dict[int, int]:
    """Per unit: rows beyond the first of each key (as ``pyarrow`` group_by counts them)."""
    keyed = table.select(list(key)).append_column(_UNIT, pa.array(unit, pa.int64()))
    keyed = keyed.filter(pc.greater_equal(keyed.column(_UNIT), 0))
    counts = keyed.group_by([_UNIT, *key]).aggregate([([], "count_all")])
    extra = counts.append_column("extra", pc.subtract(counts.column("count_all"), 1))
    per = extra.group_by(_UNIT).aggregate([("extra", "sum")])
    return {
        int(u): int(n)
        for u, n in zip(per.column(_UNIT).to_pylist(), per.column("extra_sum").to_pylist(), strict=True)
    }
