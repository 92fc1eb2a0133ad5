"""The archive quarantine: bad archive rows of each slice, in a JSON-lines file beside the job.

One file per archive bucket, ``.seamline/<job_id>.quarantine/<bucket>.jsonl`` in the job
file's folder (``<bucket>`` like ``20240301T00-20240401T00``), one entry per bad row: ``slice_id``, ``file``, ``row`` (1-based data row), ``line``
(where the record starts, when known), ``error`` and ``raw`` (the record's text, or its values
as JSON). The file is replaced whole and atomically each time a slice of its bucket runs,
before the slice commits: a re-run (a retry, or a reprocess of the bucket under another slice
id) writes the same entries again, never a second copy, and a bucket whose files were fixed
leaves no stale entries.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from backfill.sources.archive_rows import BadRow
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Slice, TimeBucket


def quarantine_dir(job: JobSpec) -> Path:
    """Where the job's archive quarantine files live."""
    return job.base_dir / ".seamline" / f"{job.job_id}.quarantine"


def quarantine_path(job: JobSpec, bucket: TimeBucket) -> Path:
    """The quarantine file of one archive bucket."""
    return quarantine_dir(job) / f"{bucket.label()}.jsonl"


def write_quarantine(job: JobSpec, slice_: Slice, bad: Sequence[BadRow]) -> Path | None:
    """Replace the quarantine file of the slice's bucket with ``bad`` (remove it when empty);
    its path."""
    assert slice_.scope.bucket is not None, "an archive slice has a bucket"
    slice_id = slice_.slice_id
    path = quarantine_path(job, slice_.scope.bucket)
    if not bad:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for b in bad:
                out.write(json.dumps({"slice_id": slice_id, **b.to_json()}, ensure_ascii=False))
                out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_quarantine(job: JobSpec) -> Iterator[dict[str, Any]]:
    """Every entry of the job's archive quarantine (by slice, then row)."""
    folder = quarantine_dir(job)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
