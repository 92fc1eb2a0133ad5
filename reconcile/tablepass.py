"""The table side of a reconciliation in one pass: the whole table is read once, batch by
batch (the reader's ``scan_batches`` when it has one, else one ``scan``), instead of one
filtered scan per compared unit.

Every row is assigned to the unit that owns it from its lineage columns: a Kafka row
(``_seamline_source = 'kafka'``) by ``(_kafka_partition, _kafka_offset)`` against the units'
half-open offset ranges, an archive row by its event time against the units' buckets (and, for
custom-key slices, by its key value against the units' key values); rows no
unit owns are not compared, exactly as a per-unit scan would not have returned them. Each
batch's row hashes (:func:`reconcile.checksum.row_hashes`) are grouped by unit with polars:
count, the sums of the low and the high 32-bit halves (exact in 64 bits, combined modulo 2^64)
and the xor, so each unit gets the very :class:`Checksum` a scan of its scope gives. State:
O(units) aggregates, one batch, and the Kafka offsets and sides coverage needs per partition
(8 + 1 bytes per Kafka row, gathered from the same scan instead of a second one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
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
from coordinator.core.values import KeyValue, Scope, TimeBucket
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
    lineage: dict[int, list[tuple[I64, npt.NDArray[np.bool_]]]] = field(default_factory=dict)
    columns: tuple[str, ...] | None = None  # hashed columns of the table
    covered: frozenset[int] = frozenset()  # partitions whose lineage was gathered
    scans: int = 0

    def add(self, unit: int, value: Checksum) -> None:
        self.checksums[unit] = self.checksums.get(unit, Checksum()) + value

    def offsets(self, partition: int) -> tuple[I64, npt.NDArray[np.bool_]] | None:
        """Coverage lineage of ``partition``: table offsets and whether live wrote each."""
        if partition not in self.covered:
            return None
        parts = [(np.zeros(0, np.int64), np.zeros(0, np.bool_)), *self.lineage.get(partition, [])]
        return (np.concatenate([o for o, _ in parts]), np.concatenate([v for _, v in parts]))


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
    """True when no two scopes share an offset of a partition, or an instant of a bucket for
    one key value (scopes without a key hold every value; keyed scopes share one column)."""
    per_part: dict[int, list[tuple[int, int, int]]] = {}
    for i, scope in enumerate(scopes):
        for r in scope.ranges:
            per_part.setdefault(int(r.partition), []).append((int(r.start), int(r.end), i))
    plain = [(s.bucket.start, s.bucket.end, i) for i, s in enumerate(scopes)
             if s.bucket and s.key is None]  # fmt: skip
    per_value: dict[KeyValue, list[tuple[datetime, datetime, int]]] = {}
    for i, s in enumerate(scopes):
        if s.bucket and s.key is not None:
            for v in s.key.values:
                per_value.setdefault(v, []).append((s.bucket.start, s.bucket.end, i))
    columns = {s.key.column for s in scopes if s.key is not None}
    return (
        len(columns) <= 1
        and all(disjoint(rs) for rs in per_part.values())
        and disjoint(plain)
        and all(disjoint(plain + rs) for rs in per_value.values())
    )


@dataclass(frozen=True)
class PassPlan:
    """What the pass assigns: Kafka ranges per partition and archive buckets, each
    ``(start, end, unit)``, plus where coverage of each partition stops."""

    ranges: Mapping[int, Sequence[tuple[int, int, int]]]
    buckets: Sequence[tuple[int, int, int]]  # event-time microseconds
    coverage_end: Mapping[int, int]
    event_time: str
    key: Sequence[str] = ()
    bucket_keys: Mapping[int, tuple[KeyValue, ...]] = field(default_factory=dict)  # keyed units
    key_column: str | None = None  # the custom slice key's column (keyed units)


def bucket_range(bucket: TimeBucket, unit: int) -> tuple[int, int, int]:
    """``(start_us, end_us, unit)`` of an archive bucket."""
    return _us(bucket.start), _us(bucket.end), unit


def _batches(sink: TableReader) -> Iterator[pa.RecordBatch]:
    """The whole table batch by batch (``scan_batches`` when the reader streams)."""
    stream = getattr(sink, "scan_batches", None)
    if callable(stream):
        yield from stream()
    else:
        yield from sink.scan().to_batches()


def _column(batch: pa.RecordBatch, name: str, fill: int) -> I64:
    return np.asarray(
        pc.fill_null(batch.column(name), fill).to_numpy(zero_copy_only=False), np.int64
    )


def _kafka_units(batch: pa.RecordBatch, plan: PassPlan, tp: TablePass) -> npt.NDArray[np.int64]:
    """Unit of every Kafka row of ``batch`` (-1 otherwise); records coverage lineage."""
    is_kafka = np.asarray(
        pc.equal(batch.column(lineage.SOURCE), "kafka").to_numpy(zero_copy_only=False), np.bool_
    ) & np.asarray(batch.column(lineage.OFFSET).is_valid().to_numpy(zero_copy_only=False))
    unit = np.full(batch.num_rows, -1, dtype=np.int64)
    if not is_kafka.any():
        return unit
    parts, offsets = _column(batch, lineage.PARTITION, -1), _column(batch, lineage.OFFSET, -1)
    live = np.asarray(
        pc.equal(batch.column(lineage.SIDE), "live").to_numpy(zero_copy_only=False), np.bool_
    )
    for p in np.unique(parts[is_kafka]).tolist():
        rows = np.flatnonzero(is_kafka & (parts == p))
        unit[rows] = assign_offsets(offsets[rows], plan.ranges.get(p, ()))
        end = plan.coverage_end.get(p)
        if end is not None:
            seen = rows[(offsets[rows] >= 0) & (offsets[rows] < end)]
            tp.lineage.setdefault(p, []).append((offsets[seen], live[seen]))
    return unit


def _archive_units(batch: pa.RecordBatch, plan: PassPlan) -> npt.NDArray[np.int64]:
    unit = np.full(batch.num_rows, -1, dtype=np.int64)
    is_archive = np.asarray(
        pc.equal(batch.column(lineage.SOURCE), "archive").to_numpy(zero_copy_only=False),
        np.bool_,
    )
    if not plan.buckets or not is_archive.any():
        return unit
    at, valid = _micros(batch, plan.event_time)
    rows = np.flatnonzero(is_archive & valid)
    plain = [b for b in plan.buckets if b[2] not in plan.bucket_keys]
    if plain:
        unit[rows] = assign_offsets(at[rows], plain)
    if plan.bucket_keys and plan.key_column is not None:
        _keyed_units(batch, plan, at, is_archive & valid, unit)
    return unit


def _keyed_units(
    batch: pa.RecordBatch, plan: PassPlan, at: I64, mask: npt.NDArray[np.bool_], unit: I64
) -> None:
    """Assign archive rows of custom-key units: per key value, the buckets holding it."""
    assert plan.key_column is not None
    column = batch.column(plan.key_column)
    per_value: dict[KeyValue, list[tuple[int, int, int]]] = {}
    for b in plan.buckets:
        for v in plan.bucket_keys.get(b[2], ()):
            per_value.setdefault(v, []).append(b)
    for v, buckets in per_value.items():
        hit = pc.fill_null(pc.equal(column, v), False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(mask & np.asarray(hit, np.bool_))
        if len(rows):
            found = assign_offsets(at[rows], buckets)
            unit[rows] = np.where(found >= 0, found, unit[rows])


def table_pass(sink: TableReader, plan: PassPlan) -> TablePass:
    """One scan of the whole table: checksums and duplicate keys per unit, and the lineage
    offsets of every partition for coverage (see the module doc)."""
    tp = TablePass(scans=1, covered=frozenset(plan.coverage_end))
    keyed: list[pa.Table] = []
    for batch in _batches(sink):
        cols = tuple(hashed_columns(batch.schema.names))
        tp.columns = tp.columns or cols
        if not batch.num_rows:
            continue
        archive = _archive_units(batch, plan)
        unit = np.maximum(_kafka_units(batch, plan, tp), archive)  # sources are disjoint
        for u, value in grouped_checksums(row_hashes(batch, cols), unit).items():
            tp.add(u, value)
        if plan.key and (archive >= 0).any():
            keyed.append(_keyed(batch, archive, plan.key))
    if keyed:
        tp.duplicate_keys.update(_duplicates(pa.concat_tables(keyed)))
    return tp


def _micros(batch: pa.RecordBatch, event_time: str) -> tuple[I64, npt.NDArray[np.bool_]]:
    col = batch.column(event_time)
    ns = pa.types.is_timestamp(col.type) and col.type.unit == "ns"
    ts = col.cast(pa.int64()) if ns else col.cast(_US).cast(pa.int64())
    valid = np.asarray(ts.is_valid().to_numpy(zero_copy_only=False), np.bool_)
    values = np.asarray(pc.fill_null(ts, 0).to_numpy(zero_copy_only=False), np.int64)
    return (np.floor_divide(values, 1000) if ns else values), valid


def _us(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


def _keyed(batch: pa.RecordBatch, unit: npt.NDArray[np.int64], key: Sequence[str]) -> pa.Table:
    table = pa.Table.from_batches([batch]).select(list(key))
    table = table.append_column(_UNIT, pa.array(unit, pa.int64()))
    return table.filter(pc.greater_equal(table.column(_UNIT), 0))


def _duplicates(keyed: pa.Table) -> dict[int, int]:
    """Per unit: rows beyond the first of each key (as ``pyarrow`` group_by counts them)."""
    key = [n for n in keyed.schema.names if n != _UNIT]
    counts = keyed.group_by([_UNIT, *key]).aggregate([([], "count_all")])
    extra = counts.append_column("extra", pc.subtract(counts.column("count_all"), 1))
    per = extra.group_by(_UNIT).aggregate([("extra", "sum")])
    units, sums = per.column(_UNIT).to_pylist(), per.column("extra_sum").to_pylist()
    return {int(u): int(n) for u, n in zip(units, sums, strict=True)}
