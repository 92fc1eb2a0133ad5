"""The event-time span of one archive file, as the planner sees it (DESIGN §1).

The planner plans one slice per bucket between a file's earliest and latest event time; the
archive reader asks the same question to find which slice owns a file's bad rows (the slice
whose bucket holds the file's earliest event time), so both use :func:`file_span`.

Event times that do not convert (text that is no timestamp, values outside years 1..9999)
are left out of the span, never fatal: the rows holding them are quarantined by the reader.
Parquet files answer from their footer statistics when those are exact (no data read).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from coordinator.core.errors import ConfigError
from stream.decode.coerce import MAX_MS, MIN_MS

log = logging.getLogger(__name__)

_UTC_MS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class Span:
    """A file's earliest and latest valid event time (UTC) and its row count."""

    lo: datetime
    hi: datetime
    rows: int


def _event_times(path: Path, fmt: str, column: str) -> tuple[pa.ChunkedArray, int]:
    if fmt == "parquet":
        table = pq.read_table(path, columns=[column])
    elif fmt == "csv":
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(include_columns=[column]))
    else:
        table = pjson.read_json(path).select([column])
    return table.column(column), table.num_rows


def _to_utc(value: pa.ChunkedArray | pa.Scalar) -> pa.ChunkedArray | pa.Scalar:
    """Text or dates as UTC milliseconds: ISO text with a zone, else read as UTC."""
    try:
        return value.cast(_UTC_MS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return value.cast(pa.timestamp("ms")).cast(_UTC_MS)


def _cast_lenient(value: pa.ChunkedArray) -> pa.ChunkedArray:
    """``value`` as UTC milliseconds; values that do not convert become null."""
    try:
        return _to_utc(value)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        out = []
        for v in value.to_pylist():
            try:
                out.append(_to_utc(pa.scalar(v, value.type)).value)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError, ValueError):
                out.append(None)
        return pa.chunked_array([pa.array(out, pa.int64())]).cast(_UTC_MS)


def as_utc(value: pa.ChunkedArray) -> pa.ChunkedArray:
    """Event times as UTC milliseconds; values that do not convert or lie outside years
    1..9999 become null. ``ConfigError`` for a column type that is no event time."""
    if pa.types.is_timestamp(value.type):
        if not value.type.tz:
            value = pc.assume_timezone(value, "UTC")
        raw = value.cast(pa.int64())
        per_ms = {"s": 1 / 1000, "ms": 1, "us": 1000, "ns": 1_000_000}[value.type.unit]
        inside = pc.and_(pc.greater_equal(raw, int(MIN_MS * per_ms)),
                         pc.less_equal(raw, int(MAX_MS * per_ms)))  # fmt: skip
        return pc.if_else(inside, value, pa.scalar(None, value.type)).cast(_UTC_MS, safe=False)
    if pa.types.is_date(value.type) or pa.types.is_string(value.type):
        return as_utc(_cast_lenient(value))
    if pa.types.is_integer(value.type):  # epoch milliseconds, like the stream
        return as_utc(value.cast(pa.int64()).cast(pa.timestamp("ms"), safe=False))
    raise ConfigError(f"expected an event-time column, found type {value.type}")


def footer_span(path: Path, column: str) -> tuple[bool, Span | None]:
    """The span of a Parquet file from its footer statistics alone, without reading data.

    Returns ``(answered, span)``; not answered when the footer cannot answer exactly (no
    statistics in some row group, a column type whose min/max order is not time order, e.g.
    strings, or a min/max outside years 1..9999), so the caller scans the column instead.
    """
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if column not in names:
        return False, None
    idx = names.index(column)
    arrow_type = meta.schema.to_arrow_schema().field(column).type
    if not (pa.types.is_timestamp(arrow_type) or pa.types.is_integer(arrow_type)
            or pa.types.is_date(arrow_type)):  # fmt: skip
        return False, None
    lows, highs, nulls = [], [], 0
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(idx).statistics
        if stats is None or not stats.has_null_count:
            return False, None
        nulls += stats.null_count
        if stats.has_min_max:
            try:
                lows.append(stats.min)
                highs.append(stats.max)
            except (OverflowError, ValueError):  # beyond what Python's datetime holds
                return False, None
        elif stats.null_count != meta.row_group(rg).num_rows:
            return False, None
    if meta.num_rows == 0 or nulls == meta.num_rows:
        return True, None
    span = as_utc(pa.chunked_array([pa.array([min(lows), max(highs)], type=arrow_type)]))
    if span.null_count:  # an end outside years 1..9999: only a scan knows the valid span
        return False, None
    lo, hi = span[0].as_py(), span[1].as_py()
    return True, Span(lo.astimezone(UTC), hi.astimezone(UTC), meta.num_rows)


def scan_span(path: Path, fmt: str, column: str) -> Span | None:
    """The span of any archive file by reading its event-time column; ``None``: no valid
    event time. ``ConfigError`` when the file or the column cannot be read."""
    try:
        values, rows = _event_times(path, fmt, column)
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise ConfigError(
            f"archive file={path}: cannot read event-time column {column!r} ({exc})",
            hint="check history.archive.format and schema.event_time",
        ) from None
    times = as_utc(values)
    if rows == 0 or times.null_count == rows:
        if rows:
            log.warning("archive file=%s: no valid event time in %d rows (not planned)", path, rows)
        return None
    lo, hi = pc.min(times).as_py(), pc.max(times).as_py()
    assert isinstance(lo, datetime) and isinstance(hi, datetime)
    return Span(lo.astimezone(UTC), hi.astimezone(UTC), rows)


def file_span(path: Path, fmt: str, column: str) -> Span | None:
    """The planner's span of one file: the footer when exact, else a scan."""
    if fmt == "parquet":
        try:
            answered, found = footer_span(path, column)
        except (OSError, pa.ArrowInvalid):
            answered, found = False, None  # the scan reports the file with its error
        if answered:
            return found
    return scan_span(path, fmt, column)
