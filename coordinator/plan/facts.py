"""Thin I/O adapters feeding the pure planner: archive file facts and exact Kafka counts.

* :func:`scan_archives` finds the job's archive files (globs relative to the job file) and
  reads each file's event-time range and row count.
* :func:`file_keys` reads the distinct values of the custom slice key of one file (Parquet
  footer statistics when every row group holds one value, else a polars distinct scan of
  that one column).
* :func:`count_kafka_slices` counts the committed records of every Kafka slice by reading
  ``[log_start, hwm)`` read_committed without decoding (offsets are sparse: transaction
  markers and aborted records take offsets, so the offset width is only an upper bound).
"""

from __future__ import annotations

import bisect
import glob
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from backfill.sources.archive_span import Span, footer_span, scan_span
from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import ArchiveSpec, JobSpec
from coordinator.core.values import Cut, KeyValue, Slice
from coordinator.plan.planner import ArchiveFile, BucketUnit
from stream.kafka.reader import iter_kafka_range

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)


def archive_unit(job: JobSpec) -> BucketUnit:
    """The one bucket unit all archive sources share (buckets of one table must not overlap)."""
    units = {a.bucket for a in job.history.archive}
    if len(units) > 1:
        raise ConfigError(
            f"key=history.archive.bucket: expected one bucket unit, found {sorted(units)}",
            hint="use the same bucket for every archive source",
        )
    return units.pop() if units else "day"


def _file(path: Path, span: Span) -> ArchiveFile:
    return ArchiveFile(str(path), span.lo, span.hi, span.rows, path.stat().st_size)


def _footer_facts(path: Path, column: str) -> tuple[bool, ArchiveFile | None]:
    """Facts of a Parquet file from its footer statistics alone (see
    :func:`backfill.sources.archive_span.footer_span`); ``(answered, facts)``."""
    answered, span = footer_span(path, column)
    return answered, (None if span is None else _file(path, span))


def scan_file(path: Path, spec: ArchiveSpec, column: str) -> ArchiveFile | None:
    """Facts about one file; ``None`` for a file without a valid event time.

    Parquet files answer from their footer statistics when those are exact (no data read);
    other files, and Parquet files without usable statistics, are scanned for the column.
    Event times that do not convert are left out (their rows are quarantined by the slice
    that owns the file's bad rows), never fatal.
    """
    if spec.format == "parquet":
        try:
            answered, found = _footer_facts(path, column)
        except (OSError, pa.ArrowInvalid):
            answered, found = False, None  # the scan below reports the file with its error
        if answered:
            return found
    span = scan_span(path, spec.format, column)
    return None if span is None else _file(path, span)


def _footer_keys(path: Path, column: str) -> frozenset[KeyValue] | None:
    """The key values of a Parquet file from its footer, when every row group holds one
    value and no null (a file written per tenant); else None."""
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if column not in names:
        return None
    idx, out = names.index(column), set()
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(idx).statistics
        if (stats is None or not stats.has_min_max or not stats.has_null_count
                or stats.null_count or stats.min != stats.max):  # fmt: skip
            return None
        out.add(stats.min)
    return frozenset(out)


def _scan_keys(path: Path, fmt: str, column: str) -> pl.Series:
    import polars as pl  # only key discovery needs it; every CLI start would pay its import

    if fmt == "parquet":
        frame = pl.scan_parquet(path)
    elif fmt == "csv":
        frame = pl.scan_csv(path, schema_overrides={column: pl.Utf8})
    else:
        frame = pl.scan_ndjson(path)
    return frame.select(pl.col(column).unique()).collect().get_column(column)


def file_keys(
    path: Path, fmt: str, column: str, kind: type, *, nulls_ok: bool = False
) -> frozenset[KeyValue]:
    """The distinct non-null values of ``column`` in one archive file, as ``kind`` (str or
    int). Unless ``nulls_ok`` (values listed in the job), a null value is a ``ConfigError``:
    no discovered key slice would own that row."""
    import polars as pl

    try:
        found = _footer_keys(path, column) if fmt == "parquet" else None
        if found is None:
            values = _scan_keys(path, fmt, column)
            if values.null_count() and not nulls_ok:
                raise ConfigError(
                    f"archive file={path}: column {column!r} holds null values; no key slice "
                    "would own those rows",
                    hint="fill the key in the archive, or list the values to load in "
                    "history.archive.slice_by.values",
                )
            found = frozenset(v for v in values.to_list() if v is not None)
        return frozenset(kind(v) for v in found)
    except (OSError, pl.exceptions.PolarsError, pa.ArrowInvalid, ValueError) as exc:
        raise ConfigError(
            f"archive file={path}: cannot read slice key column {column!r} as {kind.__name__} "
            f"({type(exc).__name__}: {exc})",
            hint="check history.archive.slice_by.column and the column's [schema.fields] type",
        ) from None


def scan_archives(job: JobSpec) -> list[ArchiveFile]:
    """Every archive file of ``job`` with its event-time range (sorted by path), and with
    ``[history.archive] slice_by`` the key values each file holds.

    An archive glob that matches no file is a ``ConfigError`` naming it (exit 3).
    """
    slice_by = job.slice_by()
    kind: type = str if slice_by and job.schema_.fields[slice_by.column] == "string" else int
    out: list[ArchiveFile] = []
    for i, spec in enumerate(job.history.archive):
        pattern = str(job.resolve(spec.glob))
        paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        if not paths:
            raise ConfigError(
                f"job={job.job_id} history.archive[{i}].glob={spec.glob!r}: expected at least "
                f"one file, found none matching {pattern}",
                hint="fix the glob (relative to the job file's folder) or remove that "
                "[[history.archive]] entry; nothing was planned",
            )
        for path in paths:
            found = scan_file(path, spec, job.schema_.event_time)
            if found is not None and slice_by is not None:
                found = replace(found, keys=file_keys(
                    path, spec.format, slice_by.column, kind, nulls_ok=slice_by.values is not None
                ))
            if found is not None:
                out.append(found)
    return sorted(out, key=lambda f: f.path)


def count_kafka_slices(
    job: JobSpec, cut: Cut, slices: Sequence[Slice], timeout_s: float = 30.0
) -> dict[str, tuple[int, int]]:
    """Exact (records, bytes) per Kafka slice, read read_committed below the cut.

    Raises :class:`SourceError` when a partition cannot be read up to ``hwm`` within
    ``timeout_s`` (an open transaction holds the last stable offset back).
    """
    conf = job.kafka_config()
    out: dict[str, tuple[int, int]] = {}
    for part in cut.partitions:
        mine = [
            s for s in slices if s.scope.ranges and s.scope.ranges[0].partition == part.partition
        ]
        if not mine:
            continue
        mine.sort(key=lambda s: s.scope.ranges[0].start)
        starts = [s.scope.ranges[0].start for s in mine]
        counts = [[0, 0] for _ in mine]
        for batch in iter_kafka_range(conf, cut.topic, part.history, timeout_s=timeout_s):
            for msg in batch:
                i = bisect.bisect_right(starts, msg.offset) - 1
                counts[i][0] += 1
                counts[i][1] += len(msg.value or b"") + len(msg.key or b"")
        out.update({s.slice_id: (c[0], c[1]) for s, c in zip(mine, counts, strict=True)})
    return out
