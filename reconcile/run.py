"""Reconcile a job: checksums per slice on both sides, coverage per partition, drill-down.

Units are compared one at a time (memory O(slice)): every planned slice, every history range
no slice covers ("unplanned"), and the live range ``[hwm, end)`` of each partition in chunks
of ``backfill.slice_records`` offsets. ``end`` is the read-committed end when the run starts;
with ``min_age_s`` the live range stops before the first record younger than that (records
still in flight are left out; history below the cut is always compared).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coordinator import lineage
from coordinator.errors import ReconcileError
from coordinator.jobspec import JobSpec
from coordinator.ports import TableSink
from coordinator.values import Cut, Offset, OffsetRange, PartitionId, Scope, Slice
from reconcile.checksum import Checksum, checksum, hashed_columns
from reconcile.coverage import I64, PartitionCoverage, compare_offsets
from reconcile.drilldown import KAFKA_KEY, bisect_diff
from reconcile.model import ReconcileReport, SliceReport, UnitKind, describe_scope
from reconcile.source import SourceUnit

log = logging.getLogger(__name__)


class UnitSource(Protocol):
    """Where the source side comes from (``reconcile.source.KafkaUnits`` in production)."""

    def ends(self, partitions: Sequence[int]) -> dict[int, int]: ...

    def read(self, ranges: Sequence[OffsetRange]) -> SourceUnit: ...


@dataclass(frozen=True)
class Unit:
    """One compared unit: a planned slice or a pseudo-slice."""

    unit_id: str
    kind: UnitKind
    scope: Scope
    slice: Slice | None = None


def _chunks(p: int, start: int, end: int, width: int) -> list[OffsetRange]:
    return [
        OffsetRange(PartitionId(p), Offset(a), Offset(min(a + width, end)))
        for a in range(start, end, width)
    ]


def _uncovered(
    p: int, start: int, end: int, ranges: Iterable[OffsetRange]
) -> list[tuple[int, int]]:
    out, pos = [], start
    for r in sorted(r for r in ranges if r.partition == p):
        if r.start > pos:
            out.append((pos, min(r.start, end)))
        pos = max(pos, r.end)
    if pos < end:
        out.append((pos, end))
    return [(a, b) for a, b in out if b > a]


def plan_units(
    cut: Cut, slices: Sequence[Slice], ends: Mapping[int, int], width: int
) -> list[Unit]:
    """Planned slices, then unplanned history ranges, then live chunks, per partition."""
    units = [
        Unit(s.slice_id, "history" if s.scope.source == "kafka" else "archive", s.scope, s)
        for s in slices
    ]
    planned = [r for s in slices for r in s.scope.ranges]
    for pc_ in cut.partitions:
        p = pc_.partition
        for a, b in _uncovered(p, pc_.log_start, pc_.hwm, planned):
            for r in _chunks(p, a, b, width):
                units.append(Unit(f"unplanned-p{p}-{r.start}", "unplanned", Scope("kafka", (r,))))
        for r in _chunks(p, pc_.hwm, max(pc_.hwm, ends.get(p, pc_.hwm)), width):
            units.append(Unit(f"live-p{p}-{r.start}", "live", Scope("kafka", (r,))))
    return units


@dataclass
class _Partition:
    """Source facts gathered for one partition while units are compared."""

    offsets: list[I64] = field(default_factory=list)
    quarantined: list[I64] = field(default_factory=list)
    upper: int | None = None  # first offset left out by min-age


def _trim_young(unit: SourceUnit, cutoff_ms: int) -> tuple[SourceUnit, int | None]:
    young = np.flatnonzero(unit.timestamps_ms > cutoff_ms)
    if not len(young):
        return unit, None
    upper = int(unit.offsets[young[0]])
    keep = unit.offsets < upper
    rows = unit.rows
    if rows is not None:
        rows = rows.filter(pc.less(rows.column(lineage.OFFSET), pa.scalar(upper, pa.int64())))
    q = unit.quarantined[unit.quarantined < upper]
    return SourceUnit(rows, unit.offsets[keep], unit.timestamps_ms[keep], q), upper


def _limit(scope: Scope, upper: int | None) -> Scope:
    if upper is None:
        return scope
    r = scope.ranges[0]
    return Scope(
        "kafka", (OffsetRange(r.partition, r.start, Offset(max(r.start, min(r.end, upper)))),)
    )


def _duplicate_keys(rows: pa.Table, key: Sequence[str]) -> int:
    if not key or rows.num_rows == 0:
        return 0
    counts = rows.group_by(list(key)).aggregate([([], "count_all")]).column("count_all")
    return int(pc.sum(pc.subtract(counts, 1)).as_py() or 0)


def _columns(source: pa.Table | None, table: pa.Table, unit_id: str) -> list[str]:
    cols = hashed_columns(table.schema.names)
    if source is not None and hashed_columns(source.schema.names) != cols:
        raise ReconcileError(
            f"slice_id={unit_id}: expected source columns {cols}, "
            f"found {hashed_columns(source.schema.names)}",
            hint="the transform must return the table's columns on both sides",
        )
    return cols


def compare_unit(
    unit: Unit,
    source: pa.Table | None,
    table: pa.Table,
    *,
    key: Sequence[str],
    quarantined: int = 0,
) -> SliceReport:
    """Checksums of both sides of ``unit``; on a difference, the drill-down."""
    cols = _columns(source, table, unit.unit_id)
    src_sum = checksum(source, cols) if source is not None else Checksum()
    tab_sum = checksum(table, cols)
    dup = _duplicate_keys(table, key) if unit.kind == "archive" else 0
    drill = None
    if src_sum != tab_sum:
        bisect_key = KAFKA_KEY if unit.scope.source == "kafka" else (tuple(key) or tuple(cols))
        drill = bisect_diff(
            source if source is not None else table.schema.empty_table(),
            table,
            key=bisect_key,
            columns=cols,
        )
        log.warning("slice mismatch slice_id=%s differences=%d", unit.unit_id, drill.total)
    return SliceReport(
        unit.unit_id, unit.kind, describe_scope(unit.scope), src_sum, tab_sum,
        quarantined=quarantined, duplicate_keys=dup, drilldown=drill, ranges=unit.scope.ranges,
    )  # fmt: skip


@dataclass
class _Run:
    """The imperative shell of one reconciliation."""

    job: JobSpec
    cut: Cut
    sink: TableSink
    source: UnitSource
    cutoff_ms: int | None
    parts: dict[int, _Partition]

    def kafka_unit(self, unit: Unit) -> SliceReport | None:
        p = self.parts[unit.scope.ranges[0].partition] if unit.kind == "live" else _Partition()
        if p.upper is not None:
            return None  # beyond the min-age bound of this partition
        data = self.source.read(unit.scope.ranges)
        scope = unit.scope
        if unit.kind == "live" and self.cutoff_ms is not None:
            data, p.upper = _trim_young(data, self.cutoff_ms)
            scope = _limit(scope, p.upper)
        for rng in scope.ranges:
            part = self.parts.setdefault(rng.partition, _Partition())
            part.offsets.append(
                data.offsets[(data.offsets >= rng.start) & (data.offsets < rng.end)]
            )
            part.quarantined.append(data.quarantined)
        table = self.sink.scan(scope)
        return compare_unit(
            Unit(unit.unit_id, unit.kind, scope, unit.slice), data.rows, table,
            key=KAFKA_KEY, quarantined=len(data.quarantined),
        )  # fmt: skip

    def archive_unit(self, unit: Unit) -> SliceReport:
        from backfill.archive_source import read_archive_slice

        assert unit.slice is not None
        source = read_archive_slice(self.job, unit.slice)
        return compare_unit(unit, source, self.sink.scan(unit.scope), key=self.job.table.key)

    def coverage(
        self, ends: Mapping[int, int], quarantine: Mapping[int, Iterable[int]]
    ) -> list[PartitionCoverage]:
        out = []
        for pcut in self.cut.partitions:
            p, facts = pcut.partition, self.parts[pcut.partition]
            end = facts.upper if facts.upper is not None else max(pcut.hwm, ends.get(p, pcut.hwm))
            rows = self.sink.scan(
                Scope("kafka", (OffsetRange(p, Offset(0), Offset(end)),)),
                columns=[lineage.PARTITION, lineage.OFFSET, lineage.SIDE],
            )
            given = np.asarray(list(quarantine.get(p, ())), dtype=np.int64)
            out.append(
                compare_offsets(
                    p, log_start=pcut.log_start, hwm=pcut.hwm, end=end,
                    source=np.concatenate([np.zeros(0, np.int64), *facts.offsets]),
                    table_offsets=np.asarray(rows.column(lineage.OFFSET).to_numpy(), np.int64),
                    table_live=np.asarray(pc.equal(rows.column(lineage.SIDE), "live").to_numpy(zero_copy_only=False), np.bool_),
                    quarantine=np.concatenate([given, *facts.quarantined]),
                )
            )  # fmt: skip
        return out


def reconcile_job(
    job: JobSpec,
    cut: Cut,
    slices: Sequence[Slice],
    *,
    min_age_s: float = 0.0,
    quarantine: Mapping[int, Iterable[int]] | None = None,
    sink: TableSink | None = None,
    source: UnitSource | None = None,
    now: datetime | None = None,
) -> ReconcileReport:
    """Compare source and table for every slice and partition of ``job`` (see module doc).

    ``quarantine`` maps partition to offsets the live consumer dead-lettered (counted as
    quarantined, not lost); offsets the decoder refuses on the source side are added to it.
    Raises ``ReconcileError``/``SourceError`` when the comparison cannot run.
    """
    if sink is None:
        from backfill.sinks import open_sink

        sink = open_sink(job)
    if source is None:
        from reconcile.source import KafkaUnits

        source = KafkaUnits(job)
    run_at = (now or datetime.now(UTC)).astimezone(UTC)
    cutoff = int(run_at.timestamp() * 1000 - min_age_s * 1000) if min_age_s > 0 else None
    ends = source.ends([p.partition for p in cut.partitions])
    run = _Run(job, cut, sink, source, cutoff, {p.partition: _Partition() for p in cut.partitions})
    reports: list[SliceReport] = []
    for unit in plan_units(cut, slices, ends, job.backfill.slice_records):
        report = run.archive_unit(unit) if unit.kind == "archive" else run.kafka_unit(unit)
        if report is not None:
            reports.append(report)
    coverage = run.coverage(ends, quarantine or {})
    report_ = ReconcileReport(
        job.job_id, cut.topic, run_at, min_age_s, tuple(reports), tuple(coverage)
    )
    log.info("reconciled job_id=%s result=%s", job.job_id, report_.reconciled)
    return report_
