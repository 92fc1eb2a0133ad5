"""Thin I/O adapters feeding the pure planner: archive file facts and exact Kafka counts.

* :func:`scan_archives` finds the job's archive files (globs relative to the job file) and
  reads each file's event-time range and row count.
* :func:`count_kafka_slices` counts the committed records of every Kafka slice by reading
  ``[log_start, hwm)`` read_committed without decoding (offsets are sparse: transaction
  markers and aborted records take offsets, so the offset width is only an upper bound).
"""

from __future__ import annotations

import bisect
import glob
import logging
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from backfill.sources.archive_span import Span, footer_span, scan_span
from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import ArchiveSpec, JobSpec
from coordinator.core.values import Cut, Slice
from coordinator.plan.planner import ArchiveFile, BucketUnit
from stream.kafka.reader import iter_kafka_range

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


def scan_archives(job: JobSpec) -> list[ArchiveFile]:
    """Every archive file of ``job`` with its event-time range (sorted by path).

    An archive glob that matches no file is a ``ConfigError`` naming it (exit 3).
    """
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
