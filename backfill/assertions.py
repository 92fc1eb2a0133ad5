"""Per-slice assertions (``[[backfill.assert]]``), evaluated in the worker before a slice
commits (the checks are described in :mod:`coordinator.core.controls`).

:func:`check_slice` raises :class:`SliceAssertionError` naming the slice, the check, what was
expected and what was found; the executor then writes nothing. The error is terminal (not
retried): the same rows fail the same check again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core.controls import AssertSpec
from coordinator.core.errors import SliceAssertionError
from coordinator.core.jobspec import JobSpec
from coordinator.core.refs import load_function
from coordinator.core.values import Slice

log = logging.getLogger(__name__)

#: A custom check: the slice's rows (lineage columns included) -> None (pass) or what was found.
CustomCheck = Callable[[pa.Table], "str | None"]
_HINT = "fix the data or the [[backfill.assert]] bound, then `seamline run` the job again"


def check_slice(job: JobSpec, slice_: Slice, rows: pa.Table) -> None:
    """Every assertion of ``job`` on ``rows``; raises on the first one that fails."""
    for spec in job.backfill.asserts:
        found = _evaluate(spec, job, slice_, rows)
        if found is not None:
            expected, what = found
            log.error("slice_id=%s assertion %s failed: %s", slice_.slice_id, spec.label, what)
            raise SliceAssertionError(
                f"slice_id={slice_.slice_id} check={spec.label}: expected {expected}, "
                f"found {what}; the slice was not committed",
                hint=_HINT,
            )


def _evaluate(
    spec: AssertSpec, job: JobSpec, slice_: Slice, rows: pa.Table
) -> tuple[str, str] | None:
    """(expected, found) when ``spec`` fails on ``rows``, else None."""
    if spec.check == "min_rows":
        want = int(spec.min or 0)
        return None if rows.num_rows >= want else (f"rows >= {want}", f"rows={rows.num_rows}")
    if spec.check == "min_rows_per_day":
        return _per_day(int(spec.min or 0), job.schema_.event_time, slice_, rows)
    column = rows.column(spec.column) if spec.column else None
    if spec.check == "max_null_rate" and column is not None:
        rate = column.null_count / rows.num_rows if rows.num_rows else 0.0
        ok = rate <= (spec.max or 0.0)
        return (
            None
            if ok
            else (
                f"null rate <= {spec.max}",
                f"null rate={rate:.6g} ({column.null_count}/{rows.num_rows})",
            )
        )
    if spec.check == "range" and column is not None:
        return _range(spec, column)
    if spec.check == "unique" and column is not None:
        return _unique(column)
    if spec.check == "custom" and spec.function:
        what = load_check(spec.function)(rows)
        return None if what is None else ("the custom check to pass", str(what))
    return None


def _range(spec: AssertSpec, column: pa.ChunkedArray) -> tuple[str, str] | None:
    values = pc.drop_null(column).cast(pa.float64())
    bad = pa.array([False])
    if spec.min is not None:
        bad = pc.less(values, spec.min)
    if spec.max is not None:
        above = pc.greater(values, spec.max)
        bad = above if spec.min is None else pc.or_(bad, above)
    n = pc.sum(pc.cast(bad, pa.int64())).as_py() or 0
    if not n:
        return None
    lo, hi = pc.min(values).as_py(), pc.max(values).as_py()
    bounds = [f">= {spec.min:g}"] if spec.min is not None else []
    bounds += [f"<= {spec.max:g}"] if spec.max is not None else []
    return (f"values {' and '.join(bounds)}", f"{n} values outside (min={lo:g}, max={hi:g})")


def _unique(column: pa.ChunkedArray) -> tuple[str, str] | None:
    values = pc.drop_null(column)
    counts = pc.value_counts(values)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup) == 0:
        return None
    sample = [str(v) for v in dup.field("values").to_pylist()[:3]]
    return ("unique values", f"{len(dup)} duplicated values (e.g. {', '.join(sample)})")


def _per_day(want: int, event_time: str, slice_: Slice, rows: pa.Table) -> tuple[str, str] | None:
    ts = rows.column(event_time)
    days = pc.cast(pc.floor_temporal(ts, unit="day"), pa.timestamp("us", tz="UTC")).to_pylist()
    counts: dict[datetime, int] = {}
    for d in days:
        if d is not None:
            counts[d] = counts.get(d, 0) + 1
    for day in _days_of(slice_, counts):
        if counts.get(day, 0) < want:
            return (
                f"rows >= {want} per day",
                f"rows={counts.get(day, 0)} on {day.date().isoformat()}",
            )
    return None


def _days_of(slice_: Slice, counts: dict[datetime, int]) -> list[datetime]:
    bucket = slice_.scope.bucket
    if bucket is not None:
        first = bucket.start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        end = bucket.end
    elif counts:
        first, end = min(counts), max(counts) + timedelta(days=1)
    else:
        return []
    out = []
    while first < end:
        out.append(first)
        first += timedelta(days=1)
    return out


def load_check(ref: str) -> CustomCheck:
    """Import a custom check ``module:function``; a ConfigError when it cannot be used."""
    return load_function(ref, "backfill.assert.function")


__all__ = ["CustomCheck", "check_slice", "load_check"]
