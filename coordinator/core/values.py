"""Shared value types: offsets, the cut, slices, scopes and commit tokens.

Every value is a frozen dataclass that validates itself on construction. Ranges are half-open
``[start, end)`` everywhere and an offset always means "the next offset to consume"; there is
no ``-1`` sentinel. This module imports nothing else from the project.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, NewType

Offset = NewType("Offset", int)
PartitionId = NewType("PartitionId", int)
Epoch = NewType("Epoch", int)
SnapshotId = NewType("SnapshotId", int)
EventTimeMs = NewType("EventTimeMs", int)

SourceTag = Literal["kafka", "archive"]
Side = Literal["backfill", "live"]
WriteMode = Literal["overwrite", "merge", "append"]
SliceStatus = Literal["pending", "running", "staged", "committed", "reconciled", "failed"]

TOKEN_PREFIX = "seamline."


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True, order=True)
class OffsetRange:
    """Offsets ``[start, end)`` of one Kafka partition."""

    partition: PartitionId
    start: Offset
    end: Offset

    def __post_init__(self) -> None:
        _require(self.partition >= 0, f"partition must be >= 0, found {self.partition}")
        _require(self.start >= 0, f"start must be >= 0, found {self.start}")
        _require(
            self.end >= self.start,
            f"expected end >= start for partition={self.partition}, "
            f"found start={self.start} end={self.end}",
        )

    @property
    def width(self) -> int:
        """Number of offset positions (not records: offsets are sparse)."""
        return self.end - self.start

    def __contains__(self, offset: object) -> bool:
        return isinstance(offset, int) and self.start <= offset < self.end

    def to_json(self) -> dict[str, int]:
        """Plain JSON form."""
        return {"partition": self.partition, "start": self.start, "end": self.end}

    @classmethod
    def from_json(cls, doc: Mapping[str, int]) -> OffsetRange:
        """Inverse of :meth:`to_json`."""
        return cls(PartitionId(doc["partition"]), Offset(doc["start"]), Offset(doc["end"]))


@dataclass(frozen=True)
class PartitionCut:
    """One partition of the cut: the backfill owns ``[log_start, hwm)``, live owns ``[hwm, ∞)``."""

    partition: PartitionId
    log_start: Offset
    hwm: Offset

    def __post_init__(self) -> None:
        _require(
            0 <= self.log_start <= self.hwm,
            f"expected 0 <= log_start <= hwm for partition={self.partition}, "
            f"found log_start={self.log_start} hwm={self.hwm}",
        )

    @property
    def history(self) -> OffsetRange:
        """The offsets the backfill owns."""
        return OffsetRange(self.partition, self.log_start, self.hwm)


def utc(ts: datetime) -> datetime:
    """Return ``ts`` as an aware UTC datetime; naive values are refused."""
    _require(ts.tzinfo is not None, f"expected a timezone-aware datetime, found {ts!r}")
    return ts.astimezone(UTC)


@dataclass(frozen=True)
class Cut:
    """The seam between history and live, taken once per job and epoch."""

    job_id: str
    topic: str
    partitions: tuple[PartitionCut, ...]
    taken_at: datetime
    epoch: Epoch
    watermark_ms: EventTimeMs | None = None
    plan_hash: str | None = None  # set once the plan for this cut is stored

    def __post_init__(self) -> None:
        ids = [p.partition for p in self.partitions]
        _require(ids == sorted(set(ids)), f"partitions must be unique and sorted, found {ids}")
        _require(self.epoch >= 1, f"epoch must be >= 1, found {self.epoch}")
        object.__setattr__(self, "taken_at", utc(self.taken_at))

    def hwm(self, partition: int) -> Offset:
        """The live side's start offset for ``partition``."""
        for p in self.partitions:
            if p.partition == partition:
                return p.hwm
        raise KeyError(f"partition={partition} is not in the cut of topic={self.topic}")

    @property
    def records_upper_bound(self) -> int:
        """Offset positions below the cut (an upper bound on records: offsets are sparse)."""
        return sum(p.hwm - p.log_start for p in self.partitions)


@dataclass(frozen=True, order=True)
class TimeBucket:
    """Event time ``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", utc(self.start))
        object.__setattr__(self, "end", utc(self.end))
        _require(self.end > self.start, f"expected end > start, found {self.start}..{self.end}")

    def label(self) -> str:
        """Compact id fragment, e.g. ``20240101T00-20240102T00``."""
        return f"{self.start:%Y%m%dT%H}-{self.end:%Y%m%dT%H}"


KeyValue = str | int


@dataclass(frozen=True, order=True)
class SliceKey:
    """A custom slice key: the rows whose ``column`` holds one of ``values`` (typed: str or
    int, never null); values are sorted and unique so equal keys compare equal."""

    column: str
    values: tuple[KeyValue, ...]

    def __post_init__(self) -> None:
        _require(bool(self.column), "a slice key needs a column")
        _require(bool(self.values), f"slice key column={self.column!r}: expected values")
        kinds = {type(v) for v in self.values}
        _require(
            kinds <= {str} or kinds <= {int},
            f"slice key column={self.column!r}: expected str or int values of one type, "
            f"found {sorted(k.__name__ for k in kinds)}",
        )
        object.__setattr__(self, "values", tuple(sorted(set(self.values))))  # type: ignore[type-var]


@dataclass(frozen=True)
class Scope:
    """The rows of the table a slice owns, built from typed values (never a string).

    Kafka slices own ``_kafka_partition = p AND start <= _kafka_offset < end`` for each range.
    Archive slices own rows tagged ``archive`` whose event time lies in ``bucket`` and, with a
    custom ``key``, whose key column holds one of the key's values.
    """

    source: SourceTag
    ranges: tuple[OffsetRange, ...] = ()
    bucket: TimeBucket | None = None
    key: SliceKey | None = None

    def __post_init__(self) -> None:
        if self.source == "kafka":
            _require(bool(self.ranges), "a kafka scope needs at least one offset range")
            _require(self.bucket is None, "a kafka scope is bounded by offsets, not time")
            _require(self.key is None, "a kafka scope is bounded by offsets, not a key")
        else:
            _require(self.bucket is not None, "an archive scope needs a time bucket")
            _require(not self.ranges, "an archive scope holds no offset ranges")


@dataclass(frozen=True)
class Slice:
    """A bounded unit of history that runs, resumes and verifies on its own."""

    slice_id: str
    scope: Scope
    files: tuple[str, ...] = ()
    est_rows: int = 0
    est_bytes: int = 0

    def __post_init__(self) -> None:
        _require(bool(self.slice_id), "slice_id must not be empty")
        _require(self.est_rows >= 0 and self.est_bytes >= 0, "estimates must be >= 0")


@dataclass(frozen=True)
class CommitToken:
    """What every commit stores in the table's own metadata (DESIGN §3)."""

    job_id: str
    slice_id: str
    attempt: int
    epoch: Epoch
    side: Side
    ranges: tuple[OffsetRange, ...] = field(default=())

    def __post_init__(self) -> None:
        _require(self.attempt >= 1, f"attempt must be >= 1, found {self.attempt}")
        _require(self.epoch >= 1, f"epoch must be >= 1, found {self.epoch}")

    def to_properties(self) -> dict[str, str]:
        """Flat string properties (Iceberg snapshot properties, Lance transaction properties)."""
        return {
            f"{TOKEN_PREFIX}job": self.job_id,
            f"{TOKEN_PREFIX}slice": self.slice_id,
            f"{TOKEN_PREFIX}attempt": str(self.attempt),
            f"{TOKEN_PREFIX}epoch": str(self.epoch),
            f"{TOKEN_PREFIX}side": self.side,
            f"{TOKEN_PREFIX}ranges": json.dumps([r.to_json() for r in self.ranges]),
        }

    @classmethod
    def from_properties(cls, props: Mapping[str, str]) -> CommitToken | None:
        """Parse a token from commit metadata; ``None`` when the commit is not seamline's."""
        if f"{TOKEN_PREFIX}slice" not in props:
            return None
        side = props[f"{TOKEN_PREFIX}side"]
        _require(side in ("backfill", "live"), f"unknown side {side!r} in commit token")
        return cls(
            job_id=props[f"{TOKEN_PREFIX}job"],
            slice_id=props[f"{TOKEN_PREFIX}slice"],
            attempt=int(props[f"{TOKEN_PREFIX}attempt"]),
            epoch=Epoch(int(props[f"{TOKEN_PREFIX}epoch"])),
            side="live" if side == "live" else "backfill",
            ranges=tuple(
                OffsetRange.from_json(d) for d in json.loads(props[f"{TOKEN_PREFIX}ranges"])
            ),
        )


def end_offsets(ranges: Iterable[OffsetRange]) -> dict[PartitionId, Offset]:
    """Highest ``end`` per partition over ``ranges``."""
    out: dict[PartitionId, Offset] = {}
    for r in ranges:
        out[r.partition] = max(out.get(r.partition, r.end), r.end)
    return out
