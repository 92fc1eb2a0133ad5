"""Archive reader: Parquet / CSV / JSON-lines files through pyarrow datasets (DESIGN §1).

The slice's files are read with the job's schema, filtered to the slice's time bucket on the
event-time column (Parquet row groups are pruned by their statistics), run through the job's
transform, filtered by the job's ``[history] where`` (also what the reconciler reads through
this function) and given lineage columns with null partition/offset and source ``archive``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
from pyarrow import csv as pacsv

from backfill.sinks.scopes import arrow_key, micros
from coordinator.core.controls import apply_where
from coordinator.core.errors import SourceError
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Slice, TimeBucket
from stream.decode.base import add_lineage
from stream.decode.transform import load_transform

log = logging.getLogger(__name__)

_SUFFIX_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}


def file_format(path: str, default: str = "parquet") -> pads.FileFormat:
    """The pyarrow file format of ``path`` by suffix (else ``default``)."""
    name = _SUFFIX_FORMATS.get(Path(path).suffix.lower(), default)
    if name == "csv":
        return pads.CsvFileFormat(convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    if name == "jsonl":
        return pads.JsonFileFormat()
    return pads.ParquetFileFormat()


def bucket_filter(event_time: str, bucket: TimeBucket) -> pads.Expression:
    """``start <= event_time < end`` as a dataset filter (typed scalars, no strings)."""
    ts = pa.timestamp("us", tz="UTC")
    col = pads.field(event_time)
    return (col >= pa.scalar(micros(bucket.start), ts)) & (col < pa.scalar(micros(bucket.end), ts))


def _read_files(files: tuple[str, ...], schema: pa.Schema, default: str) -> pads.Dataset:
    by_format: dict[str, list[str]] = {}
    for f in files:
        by_format.setdefault(type(file_format(f, default)).__name__, []).append(f)
    parts = [
        pads.dataset(paths, schema=schema, format=file_format(paths[0], default))
        for paths in by_format.values()
    ]
    return parts[0] if len(parts) == 1 else pads.dataset(parts)


def read_archive_slice(job: JobSpec, slice_: Slice, default_format: str | None = None) -> pa.Table:
    """The slice's archive rows in its bucket (and of its key values), transformed, with
    archive lineage."""
    bucket = slice_.scope.bucket
    if slice_.scope.source != "archive" or bucket is None:
        raise SourceError(f"slice_id={slice_.slice_id}: expected an archive slice with a bucket")
    schema = job.schema_.arrow_schema()
    fmt = default_format or (job.history.archive[0].format if job.history.archive else "parquet")
    files = tuple(str(job.resolve(f)) for f in slice_.files)
    if not files:
        rows = schema.empty_table()
    else:
        try:
            dataset = _read_files(files, schema, fmt)
            scope_filter = bucket_filter(job.schema_.event_time, bucket)
            if slice_.scope.key is not None:  # only the slice's key values
                scope_filter = scope_filter & arrow_key(slice_.scope.key)
            rows = dataset.to_table(filter=scope_filter)
        except (OSError, pa.ArrowInvalid, ValueError) as exc:
            raise SourceError(
                f"slice_id={slice_.slice_id}: cannot read archive files ({exc})",
                hint="check the files exist and match the job's [schema.fields]",
            ) from None
    out = load_transform(job.transform.function)(rows.combine_chunks())
    out = apply_where(out, job.history_filter())
    log.debug("archive slice read", extra={"slice_id": slice_.slice_id, "rows": out.num_rows})
    return add_lineage(out, None, None, "archive", "backfill")


def iter_archive_slice(job: JobSpec, slice_: Slice) -> Iterator[pa.Table]:
    """:func:`read_archive_slice` as an iterator (one table)."""
    yield read_archive_slice(job, slice_)
