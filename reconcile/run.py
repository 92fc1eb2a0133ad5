"""Reconcile a job: checksums per slice on both sides, coverage per partition, drill-down.

Units: every planned slice, every history range no slice covers ("unplanned"), and the live
range ``[hwm, end)`` of each partition in chunks of ``backfill.slice_records`` offsets. ``end``
is the read-committed end when the run starts. The source side is read and summed one unit at
a time; the table side is read in one pass (:mod:`reconcile.tablepass`: the whole table once,
batch by batch, rows grouped by unit with polars; state O(units)); a unit whose
checksums differ is then re-read on both sides and drilled down. Unit scopes that overlap keep
one table scan per unit. Merge mode takes the one pass too: each unit's source side drops the
versions the table's key index shows were superseded (:mod:`reconcile.supersede`) before it is
summed.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core import lineage
from coordinator.core.errors import ReconcileError
from coordinator.core.faults import crash_point
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import TableReader
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
from reconcile.keys import KeyCheck, check_unique, key_index
from reconcile.model import ReconcileReport, SliceReport, describe_scope
from reconcile.source import SourceUnit, dead_letter_topic, read_dead_letters
from reconcile.supersede import archive_superseded, drop_lineage, kafka_superseded
from reconcile.tablepass import (
    PassPlan,
    TablePass,
    bucket_range,
    scopes_disjoint,
    table_pass,
)
from reconcile.units import (
    Unit,
    drop_dead,
    drop_filtered,
    limit_scope,
    plan_units,
    trim_young,
)

log = logging.getLogger(__name__)


ArchiveReader = Callable[[Slice], tuple[pa.Table, int]]
"""Rows of one archive slice, with lineage, and how many of its rows are quarantined
(``backfill.sources.archive.read_archive`` in production)."""


class UnitSource(Protocol):
    """Where the source side comes from (``reconcile.source.KafkaUnits`` in production)."""

    def ends(self, partitions: Sequence[int]) -> dict[int, int]: ...

    def read(self, ranges: Sequence[OffsetRange]) -> SourceUnit: ...


@dataclass(frozen=True)
class _Pending:
    """A unit whose source side is summed, waiting for the table pass."""

    unit: Unit  # scope limited by min-age
    source: Checksum
    columns: tuple[str, ...] | None  # hashed source columns (None: no source rows)
    quarantined: int = 0
    superseded: int = 0
    tombstones: int = 0  # merge with delete_when: source records that are tombstones


@dataclass
class _Partition:
    """Source facts gathered for one partition while units are compared."""

    offsets: list[I64] = field(default_factory=list)
    quarantined: list[I64] = field(default_factory=list)
    superseded: list[I64] = field(default_factory=list)
    upper: int | None = None  # first offset left out by min-age


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
    sink: TableReader
    source: UnitSource
    archive: ArchiveReader | None
    cutoff_ms: int | None
    parts: dict[int, _Partition]
    merge_index: pa.Table | None = None  # key index, merge mode only
    dead: Mapping[int, set[int]] = field(default_factory=dict)  # dead-letter offsets
    scanned: TablePass | None = None  # the one-pass table scan (lineage for coverage)

    def per_unit(self, units: Sequence[Unit]) -> list[SliceReport]:
        """One table scan per unit (merge mode, or overlapping unit scopes)."""
        reports = []
        for unit in units:
            report = self.archive_unit(unit) if unit.kind == "archive" else self.kafka_unit(unit)
            if report is not None:
                reports.append(report)
        return reports

    def kafka_unit(self, unit: Unit) -> SliceReport | None:
        read = self.kafka_rows(unit)
        if read is None:
            return None
        unit, data = read
        crash_point("reconcile.mid_scan")  # per-slice path: the source side read, the table not
        table = self.sink.scan(unit.scope)
        rows, replaced = data.rows, 0
        if self.merge_index is not None and rows is not None:
            rows, replaced = self.drop_superseded(rows, table)
        tombs = _tombstones(rows)
        report = compare_unit(unit, rows, table, key=KAFKA_KEY, quarantined=len(data.quarantined))
        return replace(report, superseded=replaced, tombstones=tombs)

    def kafka_rows(self, unit: Unit) -> tuple[Unit, SourceUnit] | None:
        """The source rows of a Kafka unit (scope limited by min-age, dead letters moved to
        quarantined); records the coverage facts. ``None``: beyond the min-age bound."""
        p = self.parts[unit.scope.ranges[0].partition] if unit.kind == "live" else _Partition()
        if p.upper is not None:
            return None
        data = self.source.read(unit.scope.ranges)
        scope = unit.scope
        if unit.kind == "live" and self.cutoff_ms is not None:
            data, p.upper = trim_young(data, self.cutoff_ms)
            scope = limit_scope(scope, p.upper)
        if unit.kind != "live":  # the history row filter; live rows are never filtered
            data = drop_filtered(data, self.job.history_filter(kafka=True))
        for rng in scope.ranges:
            part = self.parts.setdefault(rng.partition, _Partition())
            part.offsets.append(
                data.offsets[(data.offsets >= rng.start) & (data.offsets < rng.end)]
            )
            part.quarantined.append(data.quarantined)
        kept = self.mark(drop_dead(data, self.dead))
        return Unit(unit.unit_id, unit.kind, scope, unit.slice), kept

    def mark(self, data: SourceUnit) -> SourceUnit:
        """Source rows with ``_seamline_deleted`` from the declared marker, computed as the
        writers compute it (merge mode with ``[table] delete_when``), so both sides hash it."""
        marker = self.job.table.delete_when
        if marker is None or data.rows is None:
            return data
        return replace(data, rows=lineage.mark_deleted(data.rows, *marker.marker()))

    def kafka_source(self, unit: Unit) -> _Pending | None:
        """The source side of a Kafka unit, summed (merge: superseded versions dropped)."""
        read = self.kafka_rows(unit)
        if read is None:
            return None
        rows, replaced = read[1].rows, 0
        tombs = _tombstones(rows)
        if self.merge_index is not None and rows is not None:
            rows, replaced = self.drop_superseded(rows, self.merge_index)
        return replace(_pending(read[0], rows, len(read[1].quarantined), replaced), tombstones=tombs)

    def archive_source(self, unit: Unit) -> _Pending:
        """The source side of an archive unit, summed (merge: superseded versions dropped)."""
        (rows, quarantined), replaced = self.read_archive(unit), 0
        tombs = _tombstones(rows)
        if self.merge_index is not None:
            event_time = self.job.schema_.event_time
            rows, replaced = self.archive_drop(rows, self.merge_index, [event_time])
        return replace(_pending(unit, rows, quarantined, replaced), tombstones=tombs)

    def read_archive(self, unit: Unit) -> tuple[pa.Table, int]:
        assert unit.slice is not None
        if self.archive is None:
            raise ReconcileError(
                f"slice_id={unit.unit_id}: expected an archive reader, found none",
                hint="pass archive= to reconcile_job (coordinator.service.reconcile does)",
            )
        rows, quarantined = self.archive(unit.slice)
        marker = self.job.table.delete_when
        if marker is not None:
            rows = lineage.mark_deleted(rows, *marker.marker())
        return rows, quarantined

    def table_pass(self, pending: Sequence[_Pending], ends: Mapping[int, int]) -> TablePass:
        """One scan of the whole table, rows grouped by unit (see reconcile.tablepass)."""
        crash_point("reconcile.mid_scan")  # the source side read and summed, the table not yet
        ranges: dict[int, list[tuple[int, int, int]]] = {}
        for i, p in enumerate(pending):
            for r in p.unit.scope.ranges:
                ranges.setdefault(int(r.partition), []).append((int(r.start), int(r.end), i))
        buckets = [bucket_range(p.unit.scope.bucket, i) for i, p in enumerate(pending)
                   if p.unit.scope.bucket is not None]  # fmt: skip
        ends_ = {int(c.partition): self.coverage_end(c.partition, ends) for c in self.cut.partitions}
        keyed = {i: p.unit.scope.key for i, p in enumerate(pending) if p.unit.scope.key}
        plan = PassPlan(
            ranges, buckets, ends_, self.job.schema_.event_time, self.job.table.key,
            bucket_keys={i: k.values for i, k in keyed.items()},
            key_column=next((k.column for k in keyed.values()), None),
        )  # fmt: skip
        return table_pass(self.sink, plan)

    def coverage_end(self, partition: int, ends: Mapping[int, int]) -> int:
        """Where coverage of ``partition`` stops: the min-age bound or the committed end."""
        hwm = next((int(p.hwm) for p in self.cut.partitions if p.partition == partition), 0)
        upper = self.parts[partition].upper if partition in self.parts else None
        return upper if upper is not None else max(hwm, ends.get(partition, hwm))

    def finish(self, i: int, p: _Pending, tp: TablePass) -> SliceReport:
        """The unit's report from the pass; a mismatch is drilled down on the unit's scope."""
        if p.columns is not None and tp.columns is not None and p.columns != tp.columns:
            raise ReconcileError(
                f"slice_id={p.unit.unit_id}: expected source columns {list(tp.columns)}, "
                f"found {list(p.columns)}",
                hint="the transform must return the table's columns on both sides",
            )
        table = tp.checksums.get(i, Checksum())
        if table != p.source:
            return self.drill(p)
        unit = p.unit
        return SliceReport(
            unit.unit_id, unit.kind, describe_scope(unit.scope), p.source, table,
            quarantined=p.quarantined, duplicate_keys=tp.duplicate_keys.get(i, 0),
            ranges=unit.scope.ranges, superseded=p.superseded, tombstones=p.tombstones,
        )  # fmt: skip

    def drill(self, p: _Pending) -> SliceReport:
        """The per-unit comparison of a mismatching unit (re-reads both sides of it)."""
        unit = p.unit
        if unit.kind == "archive":
            return self.archive_unit(unit)
        data = self.mark(drop_dead(self.source.read(unit.scope.ranges), self.dead))
        table, rows, replaced = self.sink.scan(unit.scope), data.rows, 0
        if self.merge_index is not None and rows is not None:
            rows, replaced = self.drop_superseded(rows, table, record=False)
        report = compare_unit(unit, rows, table, key=KAFKA_KEY, quarantined=p.quarantined)
        return replace(report, superseded=replaced, tombstones=p.tombstones)

    def one_pass(self, units: Sequence[Unit], ends: Mapping[int, int]) -> list[SliceReport]:
        """Every unit's source side, then one table pass, then the comparison."""
        pending = [
            self.archive_source(u) if u.kind == "archive" else self.kafka_source(u)
            for u in units
        ]
        kept = [p for p in pending if p is not None]
        tp = self.table_pass(kept, ends)
        self.scanned = tp
        log.info("table pass scans=%d units=%d", tp.scans, len(kept))
        return [self.finish(i, p, tp) for i, p in enumerate(kept)]

    def drop_superseded(
        self, rows: pa.Table, present: pa.Table, *, record: bool = True
    ) -> tuple[pa.Table, int]:
        """Source rows minus those a later record of the same key replaced (merge mode);
        ``record``: their offsets count as superseded in the partition's coverage."""
        assert self.merge_index is not None
        key, version = self.job.table.key, self.job.table.version
        gone = kafka_superseded(rows, present, self.merge_index, key, version)
        if gone.num_rows == 0:
            return rows, 0
        for p in set(gone[lineage.PARTITION].to_pylist()) if record else ():
            offs = gone.filter(pc.equal(gone[lineage.PARTITION], p))[lineage.OFFSET]
            self.parts.setdefault(p, _Partition()).superseded.append(
                np.asarray(offs.to_numpy(zero_copy_only=False), dtype=np.int64)
            )
        return drop_lineage(rows, gone), gone.num_rows

    def archive_drop(
        self, rows: pa.Table, present: pa.Table, match: Sequence[str] = ()
    ) -> tuple[pa.Table, int]:
        """Archive rows minus those a later record of the same key replaced (merge mode)."""
        assert self.merge_index is not None
        key = self.job.table.key
        return archive_superseded(
            rows, present, self.merge_index, key, [*key, *match], self.job.table.version
        )

    def archive_unit(self, unit: Unit) -> SliceReport:
        (source, quarantined), table, replaced = self.read_archive(unit), self.sink.scan(unit.scope), 0
        tombs = _tombstones(source)
        if self.merge_index is not None:
            source, replaced = self.archive_drop(source, table)
        report = compare_unit(unit, source, table, key=self.job.table.key,
                              quarantined=quarantined)  # fmt: skip
        return replace(report, superseded=replaced, tombstones=tombs)

    def lineage(self, p: int, end: int) -> tuple[I64, npt.NDArray[np.bool_]]:
        """Table offsets of partition ``p`` below ``end`` and whether live wrote each."""
        found = self.scanned.offsets(p) if self.scanned is not None else None
        return found if found is not None else _lineage_scan(self.sink, p, end)

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
        offsets, live = self.lineage(p, end)
        given = np.asarray(sorted(quarantine.get(p, ())), dtype=np.int64)
        return compare_offsets(
            p, log_start=pcut.log_start, hwm=pcut.hwm, end=end,
            source=np.concatenate([np.zeros(0, np.int64), *facts.offsets]),
            table_offsets=offsets, table_live=live,
            quarantine=np.concatenate([given, *facts.quarantined]),
            superseded=np.concatenate([np.zeros(0, np.int64), *facts.superseded]),
            live_position=max(pcut.hwm, live_at.get(p, pcut.hwm)),
            left_out=committed_end - end,
        )  # fmt: skip


def _pending(unit: Unit, rows: pa.Table | None, quarantined: int, replaced: int = 0) -> _Pending:
    if rows is None:
        return _Pending(unit, Checksum(), None, quarantined, replaced)
    cols = hashed_columns(rows.schema.names)
    return _Pending(unit, checksum(rows, cols), tuple(cols), quarantined, replaced)


def _tombstones(rows: pa.Table | None) -> int:
    """Source rows marked as tombstones (0 without a declared marker)."""
    if rows is None or lineage.DELETED not in rows.column_names:
        return 0
    return int(pc.sum(rows[lineage.DELETED]).as_py() or 0)


def _one_pass_safe(units: Sequence[Unit]) -> bool:
    """One pass needs disjoint unit scopes (true of any plan)."""
    return scopes_disjoint([u.scope for u in units])


def _lineage_scan(sink: TableReader, p: int, end: int) -> tuple[I64, npt.NDArray[np.bool_]]:
    rows = sink.scan(
        Scope("kafka", (OffsetRange(PartitionId(p), Offset(0), Offset(end)),)),
        columns=[lineage.PARTITION, lineage.OFFSET, lineage.SIDE],
    )
    live = pc.equal(rows.column(lineage.SIDE), "live").to_numpy(zero_copy_only=False)
    return np.asarray(rows.column(lineage.OFFSET).to_numpy(), np.int64), np.asarray(live, np.bool_)


def _key_check(
    job: JobSpec, sink: TableReader, slices: Sequence[Slice]
) -> tuple[pa.Table | None, KeyCheck | None]:
    """The key index and the uniqueness check, when the job declares keys and needs them."""
    merge = job.backfill.mode == "merge"
    if not job.table.key or not (merge or any(s.scope.source == "archive" for s in slices)):
        return None, None
    extra = (lineage.DELETED,) if merge and job.table.delete_when is not None else ()
    index = key_index(sink, job.table.key, job.schema_.event_time, job.table.version, extra)
    return (index if merge else None), check_unique(index, job.table.key, merge=merge)


def _dead_letters(
    job: JobSpec, quarantine: Mapping[int, Iterable[int]] | None
) -> tuple[str | None, dict[int, set[int]]]:
    """The caller's quarantine, or (``None``) the job's dead-letter topic and what it lists."""
    if quarantine is not None:
        return None, {p: set(v) for p, v in quarantine.items()}
    return dead_letter_topic(job), read_dead_letters(job)


#: ``on_progress(phase, done, total, rows)``: a phase starts (``done == total == 0``) or, in
#: phase :data:`UNITS`, one more unit (slice or range) was compared.
ReconcileProgress = Callable[[str, int, int, int], None]
UNITS = "units"


def _silent(phase: str, done: int, total: int, rows: int) -> None:
    """No progress wanted."""


def reconcile_job(
    job: JobSpec,
    cut: Cut,
    slices: Sequence[Slice],
    *,
    min_age_s: float = 0.0,
    quarantine: Mapping[int, Iterable[int]] | None = None,
    sink: TableReader,
    source: UnitSource,
    archive: ArchiveReader | None = None,
    now: datetime | None = None,
    one_pass: bool = True,
    on_progress: ReconcileProgress | None = None,
) -> ReconcileReport:
    """Compare source and table for every slice and partition of ``job`` (see module doc).

    ``quarantine`` maps partition to offsets quarantined by the writers (counted as
    quarantined, not lost); ``None`` reads them from the job's dead-letter topic. Offsets the
    decoder refuses on the source side are added to it. ``sink`` is the table,
    ``source`` the Kafka side (``reconcile.source.KafkaUnits``) and ``archive`` reads archive
    slices (needed only when ``slices`` has some); ``coordinator.service.reconcile`` builds
    them for a job. ``one_pass=False`` scans the table once per unit (the reference path the
    one-pass scan is tested against). Raises ``ReconcileError`` / ``SourceError`` / ``LiveError`` (dead-letter
    topic) when the comparison cannot run.
    """
    dlq_topic, given = _dead_letters(job, quarantine)
    run_at = (now or datetime.now(UTC)).astimezone(UTC)
    cutoff = int(run_at.timestamp() * 1000 - min_age_s * 1000) if min_age_s > 0 else None
    partitions = [p.partition for p in cut.partitions]
    ends = source.ends(partitions) if partitions else {}
    say = on_progress or _silent
    say("checking keys", 0, 0, 0)
    index, keys = _key_check(job, sink, slices)
    parts: dict[int, _Partition] = {p: _Partition() for p in partitions}
    run = _Run(job, cut, sink, source, archive, cutoff, parts, index, given)
    units = plan_units(cut, slices, ends, job.backfill.slice_records)
    fast = one_pass and _one_pass_safe(units)
    say(UNITS, 0, len(units), 0)
    reports = run.one_pass(units, ends) if fast else run.per_unit(units)
    rows = [r.source.rows for r in reports] + [0] * (len(units) - len(reports))
    for done, n in enumerate(rows, 1):  # units compared (the one pass ends them together)
        say(UNITS, done, len(units), n)
    say("offset coverage per partition", 0, 0, 0)
    coverage = run.coverage(ends, given)
    report_ = ReconcileReport(
        job.job_id, cut.topic, run_at, min_age_s, tuple(reports), tuple(coverage),
        keys=keys, dead_letter_topic=dlq_topic,
        dead_letters=sum(len(v) for v in given.values()),
    )  # fmt: skip
    log.info("reconciled job_id=%s result=%s", job.job_id, report_.reconciled)
    return report_
