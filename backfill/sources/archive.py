"""Archive reader: Parquet / CSV / JSON-lines files (DESIGN §1).

The slice's files are read with the job's schema (:mod:`backfill.sources.archive_rows`: a bad
row is set aside, never fatal), filtered to the slice's time bucket on the event-time column
(Parquet row groups are pruned by their statistics), run through the job's transform (a row it
fails on is set aside too), filtered by the job's ``[history] where`` (also what the reconciler
reads through this function) and given lineage columns with null partition/offset and source
``archive``.

Bad rows are quarantined by exactly one slice per file: the one whose bucket holds the file's
earliest valid event time (:func:`owns_bad_rows`, the same span the planner planned from), so
rows whose event time is missing or unreadable belong to a slice too. A row the transform
fails on belongs to the slice that read it.

A custom-key slice (``[history.archive] slice_by``) reads only the rows of its key values,
and of the bucket's bad rows only those whose key cell names one of its values
(:func:`_bad_row_key`); a bad row whose key cell cannot be read fails the slice (terminal,
naming file and row) instead of being quarantined by no slice or by several.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from backfill.sinks.scopes import arrow_key, micros
from backfill.sources.archive_rows import BadRow, FileRows, checked, read_file, row_json
from backfill.sources.archive_span import file_span
from coordinator.core.controls import apply_where
from coordinator.core.errors import SourceError
from coordinator.core.jobspec import JobSpec
from coordinator.core.retry import transient
from coordinator.core.values import Slice, SliceKey, TimeBucket
from stream.decode.base import add_lineage
from stream.decode.transform import apply_transform, load_transform

log = logging.getLogger(__name__)

_READ_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)

_SUFFIX_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}


def bucket_filter(event_time: str, bucket: TimeBucket) -> pads.Expression:
    """``start <= event_time < end`` as a dataset filter (typed scalars, no strings)."""
    ts = pa.timestamp("us", tz="UTC")
    col = pads.field(event_time)
    return (col >= pa.scalar(micros(bucket.start), ts)) & (col < pa.scalar(micros(bucket.end), ts))


@dataclass(frozen=True)
class ArchiveSlice:
    """An archive slice read: its rows (transformed, filtered, with lineage) and the bad rows
    it owns (quarantined, never written)."""

    rows: pa.Table
    bad: list[BadRow]

    def counted(self) -> tuple[pa.Table, int]:
        """The rows and how many rows are quarantined (the reconciler's archive side)."""
        return self.rows, len(self.bad)


def format_name(path: str, default: str = "parquet") -> str:
    """``csv``, ``jsonl`` or ``parquet`` for ``path`` by suffix (else ``default``)."""
    return _SUFFIX_FORMATS.get(Path(path).suffix.lower(), default)


def _in_bucket(table: pa.Table, event_time: str, bucket: TimeBucket) -> pa.ChunkedArray:
    ts = pa.timestamp("us", tz="UTC")
    col = table[event_time].cast(ts)
    lo, hi = pa.scalar(micros(bucket.start), ts), pa.scalar(micros(bucket.end), ts)
    return pc.and_(pc.greater_equal(col, lo), pc.less(col, hi)).fill_null(False)


def owns_bad_rows(path: Path, fmt: str, event_time: str, bucket: TimeBucket) -> bool:
    """Whether the slice of ``bucket`` quarantines the file's bad rows: the one whose bucket
    holds the file's earliest valid event time, as the planner saw it (exactly one slice)."""
    span = file_span(path, fmt, event_time)
    return span is not None and bucket.start <= span.lo < bucket.end


def _file_rows(job: JobSpec, name: str, fmt: str, bucket: TimeBucket) -> FileRows:
    """The good rows of one file inside ``bucket`` and, if this slice owns them, its bad rows.

    Parquet is read pruned to the bucket (row-group statistics) except by the owning slice,
    which reads the whole file to find every bad row.
    """
    schema, event_time = job.schema_.arrow_schema(), job.schema_.event_time
    path = job.resolve(name)
    if fmt == "parquet" and not owns_bad_rows(path, fmt, event_time, bucket):
        try:
            found = pads.dataset(str(path), schema=schema, format=pads.ParquetFileFormat())
            table = found.to_table(filter=bucket_filter(event_time, bucket))
            return replace(checked(table, schema, name), bad=[])
        except _READ_ERRORS:
            return replace(_in(read_file(path, fmt, schema, name), event_time, bucket), bad=[])
    rows = _in(read_file(path, fmt, schema, name), event_time, bucket)
    if rows.bad and (fmt == "parquet" or owns_bad_rows(path, fmt, event_time, bucket)):
        return rows
    return replace(rows, bad=[])


def _in(rows: FileRows, event_time: str, bucket: TimeBucket) -> FileRows:
    return rows.filter(_in_bucket(rows.table, event_time, bucket))


def read_archive(job: JobSpec, slice_: Slice, default_format: str | None = None) -> ArchiveSlice:
    """The slice's archive rows in its bucket, transformed, with archive lineage, and the bad
    rows it owns (``BadRow``: file, row, line, error, raw). A row the transform fails on is a
    bad row of this slice too. ``SourceError`` (terminal) when a file itself cannot be read."""
    bucket = slice_.scope.bucket
    if slice_.scope.source != "archive" or bucket is None:
        raise SourceError(f"slice_id={slice_.slice_id}: expected an archive slice with a bucket")
    schema = job.schema_.arrow_schema()
    fmt = default_format or (job.history.archive[0].format if job.history.archive else "parquet")
    parts: list[tuple[str, FileRows]] = []
    for name in slice_.files:
        try:
            parts.append((name, _file_rows(job, name, format_name(name, fmt), bucket)))
        except OSError as exc:
            raise transient(SourceError(
                f"slice_id={slice_.slice_id} file={name}: cannot read archive file ({exc})",
                hint="check the file exists and is readable",
            )) from None
        except _READ_ERRORS as exc:
            raise SourceError(
                f"slice_id={slice_.slice_id} file={name}: expected a {format_name(name, fmt)} "
                f"file, found one Arrow cannot read ({exc})",
                hint="check history.archive.format and the file's contents",
            ) from None
    if slice_.scope.key is not None:  # only the slice's key values, and their bad rows
        parts = [(name, _of_key(job, slice_, name, format_name(name, fmt), p))
                 for name, p in parts]  # fmt: skip
    tables = [p.table for _, p in parts if p.table.num_rows]
    rows = pa.concat_tables(tables).combine_chunks() if tables else schema.empty_table()
    bad = [b for _, p in parts for b in p.bad]
    out, _, failed = apply_transform(rows, load_transform(job.transform.function))
    if failed:
        where = [(name, n) for name, p in parts for n in p.rows.to_pylist()]
        bad += [BadRow(where[i][0], where[i][1], None, why, row_json(rows, i))
                for i, why in sorted(failed.items())]  # fmt: skip
    out = apply_where(out, job.history_filter())
    log.debug("archive slice read", extra={"slice_id": slice_.slice_id, "rows": out.num_rows,
                                           "quarantined": len(bad)})  # fmt: skip
    return ArchiveSlice(add_lineage(out, None, None, "archive", "backfill"), bad)


def _of_key(job: JobSpec, slice_: Slice, name: str, fmt: str, rows: FileRows) -> FileRows:
    """The good rows of the slice's key values, and the bad rows whose key cell is one."""
    key = slice_.scope.key
    assert key is not None
    mask = pads.dataset(rows.table).to_table(
        columns={"m": arrow_key(key)}).column("m").fill_null(False)  # fmt: skip
    good = rows.filter(mask)
    wanted = {str(v) for v in key.values}
    bad = []
    for row in good.bad:
        cell = _bad_row_key(job.resolve(name), fmt, key, row)
        if cell is None:
            raise SourceError(
                f"slice_id={slice_.slice_id} file={name} row={row.row}: expected a readable "
                f"{key.column!r} value (the slice_by column) in a bad row, found none",
                hint="fix the row's key cell so the row can be quarantined by its key slice",
            )
        if cell in wanted:
            bad.append(row)
    return FileRows(good.table, good.rows, bad)


def _bad_row_key(path: Path, fmt: str, key: SliceKey, row: BadRow) -> str | None:
    """The text of the bad row's ``slice_by`` cell (from its raw record), or None."""
    try:
        if fmt == "csv":
            with path.open(newline="", encoding="utf-8", errors="replace") as fh:
                header = next(csv.reader(fh))
            cells = next(csv.reader([row.raw]))
            found: object = dict(zip(header, cells, strict=False)).get(key.column)
        else:  # JSON lines: the record; Parquet: its values as JSON
            record = json.loads(row.raw)
            found = record.get(key.column) if isinstance(record, dict) else None
    except (OSError, StopIteration, ValueError, csv.Error):
        return None
    if found is None or isinstance(found, bool) or not isinstance(found, str | int):
        return None
    text = str(found).strip()
    if isinstance(key.values[0], int):
        try:
            text = str(int(text))
        except ValueError:
            return None
    return text or None


def read_archive_slice(job: JobSpec, slice_: Slice, default_format: str | None = None) -> pa.Table:
    """The rows of :func:`read_archive` (its bad rows left out)."""
    return read_archive(job, slice_, default_format).rows


def iter_archive_slice(job: JobSpec, slice_: Slice) -> Iterator[pa.Table]:
    """:func:`read_archive_slice` as an iterator (one table)."""
    yield read_archive_slice(job, slice_)
