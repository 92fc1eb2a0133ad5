"""The reconciler's units: slices and offset ranges to compare, and the source-side trims
(in-flight records, dead letters, the history filter, the min-age bound)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core import lineage
from coordinator.core.controls import apply_where
from coordinator.core.values import (
    Cut,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
    Slice,
)
from reconcile.model import UnitKind
from reconcile.source import SourceUnit


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


def trim_young(unit: SourceUnit, cutoff_ms: int) -> tuple[SourceUnit, int | None]:
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


def drop_dead(unit: SourceUnit, dead: Mapping[int, set[int]]) -> SourceUnit:
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


def drop_filtered(unit: SourceUnit, where: pc.Expression | None) -> SourceUnit:
    """Rows the job's ``[history] where`` leaves out, and their offsets, dropped from a history
    unit: the backfill never writes them, so they are neither expected nor lost."""
    rows = unit.rows
    if where is None or rows is None:
        return unit
    kept = apply_where(rows, where)
    if kept.num_rows == rows.num_rows:
        return unit
    all_rows = np.asarray(rows.column(lineage.OFFSET).to_numpy(), np.int64)
    left = np.asarray(kept.column(lineage.OFFSET).to_numpy(), np.int64)
    keep = ~np.isin(unit.offsets, np.setdiff1d(all_rows, left))
    return SourceUnit(
        kept if kept.num_rows else None, unit.offsets[keep], unit.timestamps_ms[keep],
        unit.quarantined,
    )  # fmt: skip


def limit_scope(scope: Scope, upper: int | None) -> Scope:
    if upper is None:
        return scope
    r = scope.ranges[0]
    return Scope(
        "kafka", (OffsetRange(r.partition, r.start, Offset(max(r.start, min(r.end, upper)))),)
    )


