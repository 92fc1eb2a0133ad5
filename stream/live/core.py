"""Pure bookkeeping of the live consumer: positions, micro-batches and the pre-commit check.

The table is the source of truth (DESIGN §3). A partition's *position* is the next offset the
table holds for it (its committed live offset, else the cut's ``hwm``); it moves only when a
batch commits. A batch therefore always covers ``[position, last offset + 1)`` per partition:
contiguous with what the table already holds, so a restart or a rebalance can neither skip nor
repeat an offset. Offsets are sparse (transaction markers), so a range may start below its
first record. Nothing here does I/O.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from coordinator.core.values import Offset, OffsetRange, PartitionId
from stream.decode.base import RawMessage


@dataclass(frozen=True)
class BatchLimits:
    """When a micro-batch is flushed.

    A batch is flushed once it holds ``max_records`` or its oldest record is ``max_seconds``
    old, but never sooner than ``min_commit_seconds`` after the previous commit: under load
    batches grow instead of commits getting more frequent (fewer snapshots, less contention
    with the backfill's overwrites). ``hard_records`` bounds memory regardless.

    ``max_commit_share`` paces slow commits the same way: the next commit starts no sooner
    than ``took / max_commit_share`` after the previous one started, ``took`` being how long
    that one took. A 50 ms append is not held back (``min_commit_seconds`` decides), while a
    copy-on-write merge that rewrites most of an Iceberg table for 4 s spends at most half
    the consumer's time (at the default 0.5) committing, leaving the other half of the
    machine and of the table's commit slots to the backfill's merge slices; its batches grow
    instead, so no record waits longer than one paced cycle (like Flink's minimum pause
    between checkpoints).
    """

    max_records: int
    max_seconds: float
    min_commit_seconds: float = 1.0
    hard_factor: int = 4
    max_commit_share: float = 0.5

    def __post_init__(self) -> None:
        if self.max_records <= 0 or self.max_seconds <= 0 or self.min_commit_seconds < 0:
            raise ValueError(
                f"expected positive batch limits, found max_records={self.max_records} "
                f"max_seconds={self.max_seconds} min_commit_seconds={self.min_commit_seconds}"
            )
        if not 0 < self.max_commit_share <= 1:
            raise ValueError(
                f"expected 0 < max_commit_share <= 1, found {self.max_commit_share}"
            )

    def gap(self, took: float) -> float:
        """Seconds from the start of a commit that took ``took`` seconds to the earliest start
        of the next one (batches grow meanwhile; ``hard_records`` still flushes)."""
        return max(self.min_commit_seconds, took / self.max_commit_share)

    @property
    def hard_records(self) -> int:
        """Flush at this size even inside the minimum commit interval."""
        return self.max_records * self.hard_factor


def below_cut(
    positions: Mapping[PartitionId, Offset], cut_hwm: Mapping[PartitionId, Offset]
) -> dict[PartitionId, tuple[Offset, Offset]]:
    """Partitions whose start position lies below the current cut's ``hwm``: ``(start, hwm)``.

    Offsets below ``hwm`` belong to the backfill; a live consumer starting there would write
    them a second time (a new cut taken after live stopped).

    >>> below_cut({PartitionId(0): Offset(150), PartitionId(1): Offset(9)},
    ...           {PartitionId(0): Offset(200), PartitionId(1): Offset(9)})
    {0: (150, 200)}
    """
    return {
        p: (pos, cut_hwm[p]) for p, pos in positions.items() if p in cut_hwm and pos < cut_hwm[p]
    }


def start_positions(
    partitions: Iterable[int],
    table_offsets: Mapping[PartitionId, Offset],
    fallback: Mapping[PartitionId, Offset],
) -> dict[PartitionId, Offset]:
    """Where each partition starts: the table's committed live offset, else ``fallback`` (hwm).

    Raises ``KeyError`` naming the partition when neither knows it.
    """
    out: dict[PartitionId, Offset] = {}
    for p in partitions:
        pid = PartitionId(p)
        if pid in table_offsets:
            out[pid] = table_offsets[pid]
        elif pid in fallback:
            out[pid] = fallback[pid]
        else:
            raise KeyError(
                f"partition={p}: no committed live offset in the table and no cut hwm; "
                "take the job's cut first (seamline plan) or pass start offsets"
            )
    return out


def stale_partitions(
    ranges: Iterable[OffsetRange],
    table_offsets: Mapping[PartitionId, Offset],
    fallback: Mapping[PartitionId, Offset],
) -> dict[PartitionId, Offset]:
    """Partitions whose range does not start exactly at the table's current offset.

    Returns ``{partition: offset to re-seek to}``. A partition absent from the table must start
    at its ``fallback`` (the cut's hwm). Such a batch was read by a consumer that lost the race
    for the partition (another process committed it first): it must be dropped, never written.
    """
    stale: dict[PartitionId, Offset] = {}
    for r in ranges:
        expected = table_offsets.get(r.partition, fallback.get(r.partition))
        if expected is None or expected != r.start:
            stale[r.partition] = expected if expected is not None else r.start
    return stale


def strictly_increasing(offsets: list[int]) -> bool:
    """Whether ``offsets`` strictly increase (one C-level pass: ~6 ns per offset)."""
    return all(map(operator.lt, offsets, itertools.islice(offsets, 1, None)))


@dataclass
class _Buffer:
    """Buffered records of one partition, in offset order (columnar: cheap to append)."""

    offsets: list[int] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)


@dataclass(frozen=True)
class Batch:
    """A micro-batch taken out of the book for committing: its ranges and its records.

    ``records`` holds ``(partition, offsets, values)`` per partition, in partition order.
    """

    ranges: tuple[OffsetRange, ...]
    records: tuple[tuple[PartitionId, list[int], list[bytes | None]], ...]

    @property
    def size(self) -> int:
        """Records in the batch."""
        return sum(len(offs) for _, offs, _ in self.records)

    def columns(
        self, without: Iterable[PartitionId] = ()
    ) -> tuple[list[int], list[int], list[bytes | None]]:
        """``(partitions, offsets, values)`` of the batch, leaving out ``without``."""
        skip = set(without)
        parts: list[int] = []
        offs: list[int] = []
        vals: list[bytes | None] = []
        for p, o, v in self.records:
            if p not in skip:
                parts.extend([int(p)] * len(o))
                offs.extend(o)
                vals.extend(v)
        return parts, offs, vals


@dataclass
class LiveBook:
    """Positions and the in-flight micro-batch of the partitions this consumer owns."""

    positions: dict[PartitionId, Offset] = field(default_factory=dict)
    pending: dict[PartitionId, _Buffer] = field(default_factory=dict)
    batch_started: float | None = None
    last_commit: float = 0.0  # when the last batch was taken for committing
    commit_seconds: float = 0.0  # how long that commit took (see BatchLimits.gap)
    dropped: int = 0  # messages ignored: not owned or below the position (already committed)
    # Ends of the batch being committed (see :meth:`take`): the next batch starts there.
    inflight: dict[PartitionId, Offset] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Records in the in-flight batch."""
        return sum(len(b.offsets) for b in self.pending.values())

    def assign(self, positions: Mapping[PartitionId, Offset]) -> None:
        """Own these partitions from these positions; any buffered data for them is dropped."""
        for p, off in positions.items():
            self.positions[p] = off
            self.pending.pop(p, None)
            self.inflight.pop(p, None)
        self._reset_clock_if_empty()

    def revoke(self, partitions: Iterable[int]) -> int:
        """Stop owning ``partitions``; returns how many buffered records were discarded."""
        discarded = 0
        for p in partitions:
            pid = PartitionId(p)
            self.positions.pop(pid, None)
            self.inflight.pop(pid, None)
            buf = self.pending.pop(pid, None)
            discarded += len(buf.offsets) if buf else 0
        self._reset_clock_if_empty()
        return discarded

    def add(self, msg: RawMessage, now: float) -> bool:
        """Buffer ``msg`` if this consumer owns it and it is at or past the position."""
        return self.add_many(msg.partition, [msg.offset], [msg.value], now) == 1

    def add_many(
        self, partition: int, offsets: list[int], values: list[bytes | None], now: float
    ) -> int:
        """Buffer one partition's records (in fetch order); returns how many were kept.

        Records not owned, below the position or not past the last buffered offset are
        dropped (already committed, or delivered twice after a seek).
        """
        pid = PartitionId(partition)
        pos = self.positions.get(pid)
        if pos is None or not offsets:
            self.dropped += len(offsets)
            return 0
        buf = self.pending.setdefault(pid, _Buffer())
        floor = buf.offsets[-1] + 1 if buf.offsets else self.inflight.get(pid, pos)
        if offsets[0] >= floor and strictly_increasing(offsets):
            buf.offsets.extend(offsets)
            buf.values.extend(values)
            kept = len(offsets)
        else:
            kept = 0
            for o, v in zip(offsets, values, strict=True):
                if o >= floor:
                    buf.offsets.append(o)
                    buf.values.append(v)
                    floor = o + 1
                    kept += 1
        self.dropped += len(offsets) - kept
        if kept and self.batch_started is None:
            self.batch_started = now
        self._reset_clock_if_empty()
        return kept

    def due(self, limits: BatchLimits, now: float) -> bool:
        """Whether the in-flight batch should be flushed now."""
        size = self.size
        if size == 0 or self.batch_started is None:
            return False
        if size >= limits.hard_records:
            return True
        if now - self.last_commit < limits.gap(self.commit_seconds):
            return False
        return size >= limits.max_records or now - self.batch_started >= limits.max_seconds

    def ranges(self) -> tuple[OffsetRange, ...]:
        """The batch's offset ranges: ``[position, last offset + 1)`` per partition with data.

        While a batch is in flight, the buffered one starts where the in-flight one ends.
        """
        return tuple(
            OffsetRange(p, self.inflight.get(p, self.positions[p]), Offset(buf.offsets[-1] + 1))
            for p, buf in sorted(self.pending.items())
            if buf.offsets
        )

    def take(self, now: float) -> Batch:
        """Move the buffered batch out for committing; records read next follow it.

        At most one batch is in flight: raises ``ValueError`` until :meth:`settle` was called.
        Positions do not move until :meth:`settle` says what the table committed.
        """
        if self.inflight:
            raise ValueError(
                f"expected no batch in flight, found one ending at {dict(self.inflight)}"
            )
        ranges = self.ranges()
        records = tuple(
            (p, buf.offsets, buf.values) for p, buf in sorted(self.pending.items()) if buf.offsets
        )
        self.inflight = {r.partition: r.end for r in ranges}
        self.pending = {}
        self.batch_started = None
        self.last_commit = now
        return Batch(ranges, records)

    def settle(
        self,
        committed: Iterable[OffsetRange],
        reseek: Mapping[PartitionId, Offset],
        now: float | None = None,
    ) -> dict[PartitionId, Offset]:
        """The in-flight batch is resolved: ``committed`` ranges are in the table.

        ``now``: when it was resolved (same clock as :meth:`take`); how long the commit took
        paces the next one (:meth:`BatchLimits.gap`).

        Partitions of the in-flight batch that were not committed restart at ``reseek``'s
        offset (else at their unchanged position), and the records buffered behind them are
        dropped. Returns ``{partition: offset}`` of the owned partitions the reader must seek.
        """
        if now is not None and self.inflight:
            self.commit_seconds = max(0.0, now - self.last_commit)
        done = {r.partition for r in committed}
        for r in committed:
            if r.partition in self.positions:
                self.positions[r.partition] = r.end
        restart = dict(reseek)
        for p in self.inflight:
            if p not in done and p not in restart and p in self.positions:
                restart[p] = self.positions[p]
        self.inflight = {}
        self.reseek(restart)
        return {p: o for p, o in restart.items() if p in self.positions}

    def columns(self) -> tuple[list[int], list[int], list[bytes | None]]:
        """The batch as ``(partitions, offsets, values)``, partition by partition."""
        parts: list[int] = []
        offs: list[int] = []
        vals: list[bytes | None] = []
        for p, buf in sorted(self.pending.items()):
            parts.extend([int(p)] * len(buf.offsets))
            offs.extend(buf.offsets)
            vals.extend(buf.values)
        return parts, offs, vals

    def messages(self) -> list[RawMessage]:
        """The batch's records, partition by partition in offset order."""
        return [RawMessage(p, o, v) for p, o, v in zip(*self.columns(), strict=True)]

    def committed(self, ranges: Iterable[OffsetRange], now: float) -> None:
        """The table now holds ``ranges``: advance positions and clear those partitions."""
        for r in ranges:
            if r.partition in self.positions:
                self.positions[r.partition] = r.end
            self.pending.pop(r.partition, None)
        self.last_commit = now
        self._reset_clock_if_empty()

    def reseek(self, positions: Mapping[PartitionId, Offset]) -> int:
        """Drop the buffered records of ``positions``' partitions and restart them there."""
        discarded = 0
        for p, off in positions.items():
            buf = self.pending.pop(p, None)
            discarded += len(buf.offsets) if buf else 0
            if p in self.positions:
                self.positions[p] = off
        self._reset_clock_if_empty()
        return discarded

    def _reset_clock_if_empty(self) -> None:
        if not any(b.offsets for b in self.pending.values()):
            self.pending.clear()
            self.batch_started = None
