"""Reconcile a job: checksums per slice on both sides, coverage per partition, drill-down.

Units are compared one at a time (memory O(slice)): every planned slice, every history range
no slice covers ("unplanned"), and the live range ``[hwm, end)`` of each partition in chunks
of ``backfill.slice_records`` offsets. ``end`` is the read-committed end when the run starts.

In-flight records (``--min-age``). Without it, every committed record up to ``end`` must be in
the table: records the live consumer has not written yet are reported as ``in_flight`` (those
at or above the live side's committed position, read from the table) and FAIL the run, so
nothing is hidden; missing records below that position are ``lost``. With ``min_age_s`` the
live range of a partition stops before its first record whose Kafka timestamp is younger than
``run_at - min_age_s``: those records and everything after them are not compared (``left_out``
counts their offset positions) and table rows at or above that bound are not compared either.
History below the cut is always compared in full, and a record older than the bound that the
live side has not written still fails (``in_flight`` or ``lost``): only young records are
excused. A record with a producer timestamp in the future therefore stops the comparison of
its partition early (conservative: left out, counted, never passed as compared).

Dead letters: unless ``quarantine`` is given, the job's dead-letter topic is read and every
``(partition, offset)`` it lists counts as quarantined, not lost, as do the offsets the
source-side decoder refuses. Merge mode and business keys: see :mod:`reconcile.keys`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core import lineage
from coordinator.core.errors import ReconcileError
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import TableSink
from coordinator.core.values import (
    Cut,
    Offset,
    OffsetRange,
    PartitionCut,
    PartitionId,
    Scope,
    Slice,
)
from reconcile.checksum import Checksum, checksum, hashed_columns
from reconcile.coverage import I64, PartitionCoverage, compare_offsets
from reconcile.drilldown import KAFKA_KEY, bisect_diff
from reconcile.keys import KeyCheck, check_unique, key_index, superseded, superseded_rows
from reconcile.model import ReconcileReport, SliceReport, UnitKind, describe_scope
from reconcile.source import SourceUnit, dead_letter_topic, read_dead_letters

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
    superseded: list[I64] = field(default_factory=list)
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


def _drop_dead(unit: SourceUnit, dead: Mapping[int, set[int]]) -> SourceUnit:
    """Move rows whose offset the dead-letter topic lists from ``rows`` to ``quarantined``
    (a writer quarantined them: they are expected absent from the table)."""
    rows = unit.rows
    if rows is None or not dead:
        return unit
    listed = pa.table(
        {
            lineage.PARTITION: pa.array([p for p, offs in dead.items() for _ in offs], pa.int32()),
            lineage.OFFSET: pa.array([o for offs in dead.values() for o in offs], pa.int64()),
        }
    )
    keys = [lineage.PARTITION, lineage.OFFSET]
    hit = rows.select(keys).join(listed, keys, join_type="inner")
    if hit.num_rows == 0:
        return unit
    kept = rows.join(listed, keys, join_type="left anti")
    moved = np.asarray(hit[lineage.OFFSET].to_numpy(), dtype=np.int64)
    quarantined = np.union1d(unit.quarantined, moved)
    return SourceUnit(
        kept if kept.num_rows else None, unit.offsets, unit.timestamps_ms, quarantined
    )


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
    merge_index: pa.Table | None = None  # key index, merge mode only
    dead: Mapping[int, set[int]] = field(default_factory=dict)  # dead-letter offsets

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
        data = _drop_dead(data, self.dead)
        rows, replaced = data.rows, 0
        if self.merge_index is not None and rows is not None:
            rows, replaced = self.drop_superseded(rows, table)
        report = compare_unit(
            Unit(unit.unit_id, unit.kind, scope, unit.slice), rows, table,
            key=KAFKA_KEY, quarantined=len(data.quarantined),
        )  # fmt: skip
        return replace(report, superseded=replaced) if replaced else report

    def drop_superseded(self, rows: pa.Table, table: pa.Table) -> tuple[pa.Table, int]:
        """Source rows minus those a later record of the same key replaced (merge mode)."""
        assert self.merge_index is not None
        lineage_cols = [lineage.PARTITION, lineage.OFFSET]
        missing = rows.join(table.select(lineage_cols), lineage_cols, join_type="left anti")
        gone = superseded_rows(
            missing, self.merge_index, self.job.table.key, self.job.table.version
        )
        gone = gone.select(lineage_cols).group_by(lineage_cols).aggregate([])
        if gone.num_rows == 0:
            return rows, 0
        for p in set(gone[lineage.PARTITION].to_pylist()):
            offs = gone.filter(pc.equal(gone[lineage.PARTITION], p))[lineage.OFFSET]
            self.parts.setdefault(p, _Partition()).superseded.append(
                np.asarray(offs.to_numpy(zero_copy_only=False), dtype=np.int64)
            )
        kept = rows.join(gone, lineage_cols, join_type="left anti")
        return kept, gone.num_rows

    def archive_unit(self, unit: Unit) -> SliceReport:
        from backfill.sources.archive import read_archive_slice

        assert unit.slice is not None
        source = read_archive_slice(self.job, unit.slice)
        table = self.sink.scan(unit.scope)
        replaced = 0
        if self.merge_index is not None and source.num_rows:
            source, replaced = self.drop_superseded_archive(source, table)
        report = compare_unit(unit, source, table, key=self.job.table.key)
        return replace(report, superseded=replaced) if replaced else report

    def drop_superseded_archive(self, source: pa.Table, table: pa.Table) -> tuple[pa.Table, int]:
        """Archive rows minus those whose key the table holds from a later record (merge)."""
        assert self.merge_index is not None
        key = list(self.job.table.key)
        missing = source.join(table.select(key), key, join_type="left anti")
        if missing.num_rows == 0:
            return source, 0
        n, tagged = missing.num_rows, missing
        fill = {
            lineage.SOURCE: pa.array(["archive"] * n, pa.string()),
            lineage.PARTITION: pa.nulls(n, pa.int32()),
            lineage.OFFSET: pa.nulls(n, pa.int64()),
        }
        for name, values in fill.items():
            if name not in tagged.column_names:
                tagged = tagged.append_column(name, values)
        gone = superseded(tagged, self.merge_index, key, self.job.table.version)
        if gone.num_rows == 0:
            return source, 0
        kept = source.join(gone.select(key), key, join_type="left anti")
        return kept.select(source.column_names).cast(source.schema), source.num_rows - kept.num_rows

    def coverage(
        self, ends: Mapping[int, int], quarantine: Mapping[int, Iterable[int]]
    ) -> list[PartitionCoverage]:
        live_at = self.sink.live_offsets()
        return [self.partition_coverage(p, ends, quarantine, live_at) for p in self.cut.partitions]

    def partition_coverage(
        self,
        pcut: PartitionCut,
        ends: Mapping[int, int],
        quarantine: Mapping[int, Iterable[int]],
        live_at: Mapping[PartitionId, Offset],
    ) -> PartitionCoverage:
        p, facts = pcut.partition, self.parts[pcut.partition]
        committed_end = max(pcut.hwm, ends.get(p, pcut.hwm))
        end = facts.upper if facts.upper is not None else committed_end
        rows = self.sink.scan(
            Scope("kafka", (OffsetRange(p, Offset(0), Offset(end)),)),
            columns=[lineage.PARTITION, lineage.OFFSET, lineage.SIDE],
        )
        given = np.asarray(sorted(quarantine.get(p, ())), dtype=np.int64)
        live = pc.equal(rows.column(lineage.SIDE), "live").to_numpy(zero_copy_only=False)
        return compare_offsets(
            p, log_start=pcut.log_start, hwm=pcut.hwm, end=end,
            source=np.concatenate([np.zeros(0, np.int64), *facts.offsets]),
            table_offsets=np.asarray(rows.column(lineage.OFFSET).to_numpy(), np.int64),
            table_live=np.asarray(live, np.bool_),
            quarantine=np.concatenate([given, *facts.quarantined]),
            superseded=np.concatenate([np.zeros(0, np.int64), *facts.superseded]),
            live_position=max(pcut.hwm, live_at.get(p, pcut.hwm)),
            left_out=committed_end - end,
        )  # fmt: skip


def _key_check(
    job: JobSpec, sink: TableSink, slices: Sequence[Slice]
) -> tuple[pa.Table | None, KeyCheck | None]:
    """The key index and the uniqueness check, when the job declares keys and needs them."""
    merge = job.backfill.mode == "merge"
    if not job.table.key or not (merge or any(s.scope.source == "archive" for s in slices)):
        return None, None
    index = key_index(sink, job.table.key, job.schema_.event_time, job.table.version)
    return (index if merge else None), check_unique(index, job.table.key, merge=merge)


def _dead_letters(
    job: JobSpec, quarantine: Mapping[int, Iterable[int]] | None
) -> tuple[str | None, dict[int, set[int]]]:
    """The caller's quarantine, or (``None``) the job's dead-letter topic and what it lists."""
    if quarantine is not None:
        return None, {p: set(v) for p, v in quarantine.items()}
    return dead_letter_topic(job), read_dead_letters(job)


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

    ``quarantine`` maps partition to offsets quarantined by the writers (counted as
    quarantined, not lost); ``None`` reads them from the job's dead-letter topic. Offsets the
    decoder refuses on the source side are added to it. Raises ``ReconcileError`` /
    ``SourceError`` / ``LiveError`` (dead-letter topic) when the comparison cannot run.
    """
    if sink is None:
        from backfill.sinks.registry import open_sink

        sink = open_sink(job)
    if source is None:
        from reconcile.source import KafkaUnits

        source = KafkaUnits(job)
    dlq_topic, given = _dead_letters(job, quarantine)
    run_at = (now or datetime.now(UTC)).astimezone(UTC)
    cutoff = int(run_at.timestamp() * 1000 - min_age_s * 1000) if min_age_s > 0 else None
    partitions = [p.partition for p in cut.partitions]
    ends = source.ends(partitions) if partitions else {}
    index, keys = _key_check(job, sink, slices)
    run = _Run(job, cut, sink, source, cutoff, {p: _Partition() for p in partitions}, index, given)
    reports: list[SliceReport] = []
    for unit in plan_units(cut, slices, ends, job.backfill.slice_records):
        report = run.archive_unit(unit) if unit.kind == "archive" else run.kafka_unit(unit)
        if report is not None:
            reports.append(report)
    coverage = run.coverage(ends, given)
    report_ = ReconcileReport(
        job.job_id, cut.topic, run_at, min_age_s, tuple(reports), tuple(coverage),
        keys=keys, dead_letter_topic=dlq_topic,
        dead_letters=sum(len(v) for v in given.values()),
    )  # fmt: skip
    log.info("reconciled job_id=%s result=%s", job.job_id, report_.reconciled)
    return report_
