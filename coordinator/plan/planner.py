"""The planner: pure functions from a cut (and archive file facts) to an immutable plan.

No I/O here. Kafka history is split per partition into offset ranges of at most
``slice_records`` offset positions that tile ``[log_start, hwm)`` exactly once; archive
history is split into event-time buckets (inclusive start, exclusive end) that tile the
archive's time range exactly once. Slice ids are deterministic and the plan hash is the
sha256 of a canonical JSON of the cut's offsets and the slices' ids, scopes and files
(estimates are left out: they are refined later and never change what a slice owns).

>>> from coordinator.core.values import PartitionCut, PartitionId, Offset
>>> [s.slice_id for s in kafka_slices((PartitionCut(PartitionId(0), Offset(0), Offset(5)),), 2)]
['k-p0-000000000-000000002', 'k-p0-000000002-000000004', 'k-p0-000000004-000000005']
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import Literal
from urllib.parse import quote

from coordinator.core.errors import ConfigError, SourceDataLossError
from coordinator.core.values import (
    Cut,
    KeyValue,
    Offset,
    OffsetRange,
    PartitionCut,
    PartitionId,
    Scope,
    Slice,
    SliceKey,
    TimeBucket,
    utc,
)
from coordinator.state.codec import slice_to_json

BucketUnit = Literal["day", "hour", "month"]


@dataclass(frozen=True)
class ArchiveFile:
    """Facts about one archive file, read by a thin adapter (``coordinator.archive_scan``)."""

    path: str
    min_time: datetime  # smallest event time in the file (inclusive)
    max_time: datetime  # largest event time in the file (inclusive)
    rows: int
    bytes: int
    keys: frozenset[KeyValue] | None = None  # distinct slice-key values (None: not read)

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_time", utc(self.min_time))
        object.__setattr__(self, "max_time", utc(self.max_time))
        if self.max_time < self.min_time or self.rows < 0 or self.bytes < 0:
            raise ValueError(
                f"archive file={self.path}: expected min_time <= max_time and counts >= 0"
            )


@dataclass(frozen=True)
class Plan:
    """The immutable plan of one cut."""

    cut: Cut
    slices: tuple[Slice, ...]
    plan_hash: str

    @property
    def est_rows(self) -> int:
        """Estimated rows over all slices."""
        return sum(s.est_rows for s in self.slices)

    @property
    def est_bytes(self) -> int:
        """Estimated bytes over all slices."""
        return sum(s.est_bytes for s in self.slices)


def kafka_slice_id(rng: OffsetRange) -> str:
    """``k-p<partition>-<start>-<end>`` with zero-padded offsets."""
    return f"k-p{rng.partition}-{rng.start:09d}-{rng.end:09d}"


def split_range(rng: OffsetRange, size: int) -> list[OffsetRange]:
    """``rng`` cut into consecutive ranges of at most ``size`` offsets (none if empty)."""
    if size <= 0:
        raise ValueError(f"expected slice size > 0, found {size}")
    return [
        OffsetRange(rng.partition, Offset(a), Offset(min(a + size, rng.end)))
        for a in range(rng.start, rng.end, size)
    ]


def kafka_slices(partitions: Sequence[PartitionCut], size: int) -> list[Slice]:
    """Slices tiling ``[log_start, hwm)`` of every partition exactly once.

    The estimate is the offset width (an upper bound: offsets are sparse).
    """
    return [
        Slice(kafka_slice_id(r), Scope("kafka", (r,)), est_rows=r.width)
        for p in partitions
        for r in split_range(p.history, size)
    ]


def floor_time(ts: datetime, unit: BucketUnit) -> datetime:
    """Start of the ``unit`` bucket holding ``ts`` (UTC)."""
    ts = utc(ts)
    if unit == "hour":
        return ts.replace(minute=0, second=0, microsecond=0)
    if unit == "day":
        return ts.replace(hour=0, minute=0, second=0, microsecond=0)
    return ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_boundary(start: datetime, unit: BucketUnit) -> datetime:
    """Start of the bucket after the one starting at ``start``."""
    if unit == "hour":
        return start + timedelta(hours=1)
    if unit == "day":
        return start + timedelta(days=1)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month)


def time_buckets(first: datetime, last: datetime, unit: BucketUnit) -> list[TimeBucket]:
    """Buckets tiling ``[floor(first), end)`` exactly once, the last one holding ``last``."""
    if utc(last) < utc(first):
        raise ValueError(f"expected first <= last, found {first}..{last}")
    out: list[TimeBucket] = []
    start = floor_time(first, unit)
    while start <= utc(last):
        end = next_boundary(start, unit)
        out.append(TimeBucket(start, end))
        start = end
    return out


def bucket_slice_id(bucket: TimeBucket, unit: BucketUnit) -> str:
    """``a-day-20240101``, ``a-hour-2024010113`` or ``a-month-202401``."""
    fmt = {"hour": "%Y%m%d%H", "day": "%Y%m%d", "month": "%Y%m"}[unit]
    return f"a-{unit}-{bucket.start.strftime(fmt)}"


def _overlap_share(f: ArchiveFile, bucket: TimeBucket) -> float:
    """The share of ``f``'s time range inside ``bucket`` (uniform spread assumed)."""
    span = (f.max_time - f.min_time).total_seconds()
    if span == 0:
        return 1.0 if bucket.start <= f.min_time < bucket.end else 0.0
    lo, hi = max(f.min_time, bucket.start), min(f.max_time, bucket.end)
    return max(0.0, (hi - lo).total_seconds() / span)


def key_slice_id(key: SliceKey) -> str:
    """``<column>=<value>[+<value>...]``, each part percent-quoted (values are user data, so
    a glob character, a quote or a slash never reaches a slice id unquoted).

    >>> key_slice_id(SliceKey("tenant", ("o'brien", "acme")))
    'tenant=acme+o%27brien'
    """
    values = "+".join(quote(str(v), safe="") for v in key.values)
    return f"{quote(key.column, safe='')}={values}"


def key_groups(
    files: Sequence[ArchiveFile], declared: Sequence[tuple[KeyValue, ...]] | None
) -> list[tuple[KeyValue, ...]]:
    """The declared groups, or one group per value found in the files (sorted)."""
    if declared is not None:
        return [tuple(g) for g in declared]
    found: set[KeyValue] = set()
    for f in files:
        found |= f.keys or frozenset()
    return [(v,) for v in sorted(found)]  # type: ignore[type-var]


def _key_share(f: ArchiveFile, group: tuple[KeyValue, ...] | None) -> float:
    if group is None or f.keys is None:
        return 1.0
    return len(f.keys.intersection(group)) / max(1, len(f.keys))


def archive_slices(
    files: Sequence[ArchiveFile],
    unit: BucketUnit,
    key_column: str | None = None,
    groups: Sequence[tuple[KeyValue, ...]] = (),
) -> list[Slice]:
    """One slice per bucket (times each key group, with ``key_column``) over the files'
    event-time range, with the files it needs.

    Buckets no file overlaps, and key groups none of a bucket's files holds, are left out
    (nothing to load, nothing to overwrite). Estimates assume rows spread evenly over a
    file's time range and its key values.
    """
    if not files:
        return []
    first = min(f.min_time for f in files)
    last = max(f.max_time for f in files)
    keys: list[SliceKey | None] = (
        [SliceKey(key_column, g) for g in groups] if key_column is not None else [None]
    )
    out: list[Slice] = []
    for bucket in time_buckets(first, last, unit):
        in_bucket = [f for f in files if f.min_time < bucket.end and f.max_time >= bucket.start]
        for key in keys:
            members = sorted(
                (f for f in in_bucket
                 if key is None or f.keys is None or f.keys.intersection(key.values)),
                key=lambda f: f.path,
            )  # fmt: skip
            if members:
                out.append(_archive_slice(bucket, unit, key, members))
    return out


def _archive_slice(
    bucket: TimeBucket, unit: BucketUnit, key: SliceKey | None, members: Sequence[ArchiveFile]
) -> Slice:
    shares = [
        _overlap_share(f, bucket) * _key_share(f, key.values if key else None) for f in members
    ]
    sid = bucket_slice_id(bucket, unit)
    return Slice(
        slice_id=sid if key is None else f"{sid}-{key_slice_id(key)}",
        scope=Scope("archive", bucket=bucket, key=key),
        files=tuple(f.path for f in members),
        est_rows=round(sum(f.rows * s for f, s in zip(members, shares, strict=True))),
        est_bytes=round(sum(f.bytes * s for f, s in zip(members, shares, strict=True))),
    )


def _dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _slice_json(s: Slice) -> str:
    """Canonical JSON text of one slice without its estimates.

    A Kafka slice without files (nearly every slice of a big plan) is written from a template
    that yields exactly the bytes ``json.dumps`` would (sorted keys, no spaces, ASCII); any
    other slice goes through ``json.dumps``. The golden-hash test guards the equality.
    """
    if s.scope.source == "kafka" and s.scope.bucket is None and not s.files:
        ranges = ",".join(
            '{"end":%d,"partition":%d,"start":%d}' % (r.end, r.partition, r.start)  # noqa: UP031
            for r in s.scope.ranges
        )
        sid = encode_basestring_ascii(s.slice_id)
        return f'{{"files":[],"scope":{{"ranges":[{ranges}],"source":"kafka"}},"slice_id":{sid}}}'
    doc = {k: v for k, v in slice_to_json(s).items() if k not in ("est_rows", "est_bytes")}
    return _dumps(doc)


def _canonical(cut: Cut, slices: Iterable[Slice]) -> Iterator[str]:
    """The canonical JSON of the cut's offsets and the slices, in pieces: exactly
    ``json.dumps({"job_id", "partitions", "slices", "topic"}, sort_keys=True,
    separators=(",", ":"))``, without holding one string of the whole plan."""
    partitions = _dumps([[p.partition, p.log_start, p.hwm] for p in cut.partitions])
    yield f'{{"job_id":{json.dumps(cut.job_id)},"partitions":{partitions}'
    yield ',"slices":['
    for i, s in enumerate(slices):
        yield "," + _slice_json(s) if i else _slice_json(s)
    yield f'],"topic":{json.dumps(cut.topic)}}}'


def plan_hash(cut: Cut, slices: Iterable[Slice]) -> str:
    """sha256 (hex) of the canonical JSON of the cut's offsets and the slices."""
    digest = hashlib.sha256()
    pieces = _canonical(cut, slices)
    while chunk := "".join(itertools.islice(pieces, 4096)):
        digest.update(chunk.encode())
    return digest.hexdigest()


def make_plan(
    cut: Cut,
    slice_records: int,
    archive_files: Sequence[ArchiveFile] = (),
    unit: BucketUnit = "day",
    *,
    include_kafka: bool = True,
    key_column: str | None = None,
    key_values: Sequence[tuple[KeyValue, ...]] | None = None,
) -> Plan:
    """The plan of ``cut``: archive buckets first (oldest history; with ``key_column`` one
    slice per bucket and key group, ``key_values`` None: the values the files hold), then
    Kafka slices."""
    groups = key_groups(archive_files, key_values) if key_column is not None else []
    slices = archive_slices(archive_files, unit, key_column, groups)
    if include_kafka:
        slices += kafka_slices(cut.partitions, slice_records)
    ids = [s.slice_id for s in slices]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"job={cut.job_id}: the plan has duplicate slice ids")
    return Plan(cut, tuple(slices), plan_hash(cut, slices))


def with_estimates(plan: Plan, estimates: Mapping[str, tuple[int, int]]) -> Plan:
    """``plan`` with (rows, bytes) estimates replaced for the slices in ``estimates``."""
    slices = tuple(
        replace(s, est_rows=estimates[s.slice_id][0], est_bytes=estimates[s.slice_id][1])
        if s.slice_id in estimates
        else s
        for s in plan.slices
    )
    return Plan(plan.cut, slices, plan.plan_hash)


def lost_ranges(
    slices: Iterable[Slice], log_starts: Mapping[PartitionId, Offset], done: Iterable[str] = ()
) -> list[OffsetRange]:
    """Offsets a not-yet-done Kafka slice needs that retention already deleted."""
    finished = set(done)
    lost: list[OffsetRange] = []
    for s in slices:
        if s.slice_id in finished:
            continue
        for r in s.scope.ranges:
            low = log_starts.get(r.partition)
            if low is not None and low > r.start and r.width > 0:
                lost.append(OffsetRange(r.partition, r.start, Offset(min(low, r.end))))
    return sorted(lost)


def check_retention(
    cut: Cut,
    slices: Iterable[Slice],
    log_starts: Mapping[PartitionId, Offset],
    done: Iterable[str] = (),
) -> None:
    """Raise :class:`SourceDataLossError` if retention deleted offsets the plan still needs."""
    lost = lost_ranges(slices, log_starts, done)
    if lost:
        named = ", ".join(f"partition={r.partition} offsets=[{r.start},{r.end})" for r in lost)
        total = sum(r.width for r in lost)
        raise SourceDataLossError(
            f"job={cut.job_id} topic={cut.topic}: source data loss, retention deleted "
            f"{total} planned offsets: {named}",
            hint="load the lost range from an archive, or take a new cut with --new-cut "
            "(the loss stays reported)",
        )
