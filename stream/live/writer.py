"""Commit one live micro-batch: pre-commit check, decode, quarantine, conditional append.

:class:`BatchWriter` runs on the live consumer's commit thread (at most one batch in flight)
or inline. It touches only the sink and the quarantine, never the Kafka consumer: it returns a
:class:`BatchOutcome` saying which ranges the table now holds and which partitions must be
re-read from where, and the consumer's own thread applies it (positions, seeks, counters).

Exactly once: a batch's ranges start at the table's current offsets (checked here before the
decode, and again atomically by the sink's conditional append). A partition whose range does
not start there lost the race (another consumer committed it) and is dropped from the batch,
never written; the consumer re-seeks it to the table's offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core import lineage
from coordinator.core.errors import CommitConflictError, CommitOutcomeUnknownError, LiveError
from coordinator.core.faults import crash_point
from coordinator.core.ports import CommitRecord
from coordinator.core.retry import RetryPolicy, call_with_retry
from coordinator.core.values import CommitToken, Epoch, Offset, OffsetRange, PartitionId
from stream.decode import RecordDecoder
from stream.decode.base import Quarantined
from stream.decode.json import DECODER as JSON_DECODER
from stream.decode.transform import Transform
from stream.live.core import Batch, stale_partitions

log = logging.getLogger(__name__)


class LiveSink(Protocol):
    """The part of :class:`coordinator.core.ports.TableSink` the live consumer uses."""

    def append_live(self, data: pa.Table, token: CommitToken) -> CommitRecord: ...

    def live_offsets(self) -> dict[PartitionId, Offset]: ...

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None: ...


class QuarantineSink(Protocol):
    """Where malformed records go; ``write`` returns only once they are durable."""

    def write(self, records: Sequence[Quarantined]) -> None: ...


def slice_id_for(ranges: Sequence[OffsetRange]) -> str:
    """Deterministic id of a live batch, e.g. ``live:0@100-200,2@7-9``."""
    return "live:" + ",".join(f"{r.partition}@{r.start}-{r.end}" for r in ranges)


@dataclass(frozen=True)
class BatchOutcome:
    """What became of one batch.

    ``record`` is the table commit (``None``: nothing committed), ``reseek`` the partitions
    dropped because the table was not where their range started (``{partition: offset to
    re-read from}``), ``rows`` the rows committed and ``quarantined`` the malformed records of
    the committed partitions (already in the quarantine).
    """

    record: CommitRecord | None
    reseek: dict[PartitionId, Offset] = field(default_factory=dict)
    rows: int = 0
    quarantined: tuple[Quarantined, ...] = ()


def live_retry(attempts: int) -> RetryPolicy:
    """The live commit retry policy: ``attempts`` tries, 50 ms doubling to 2 s, equal jitter."""
    return RetryPolicy(attempts=attempts, base_s=0.05, max_s=2.0, jitter="equal")


@dataclass
class _Pending:
    """What is still to be committed of one batch (shrinks when partitions turn out stale)."""

    data: pa.Table
    ranges: tuple[OffsetRange, ...]


@dataclass(frozen=True)
class BatchWriter:
    """Writes :class:`~stream.live.core.Batch` es of one job to a :class:`LiveSink`.

    The one batch writer of both live engines (the confluent loop and Faust). Commits are
    retried under :func:`live_retry` (``max_attempts`` tries): a conflict re-reads the table's
    offsets and drops the partitions another consumer committed; an unknown outcome looks the
    batch's token up first and only retries when it is not in the table.
    """

    job_id: str
    epoch: int
    schema: pa.Schema
    transform: Transform
    sink: LiveSink
    quarantine: QuarantineSink
    fallback: Mapping[PartitionId, Offset]
    max_attempts: int = 50
    sleep: Callable[[float], None] = time.sleep
    decoder: RecordDecoder = JSON_DECODER

    def write(self, batch: Batch) -> BatchOutcome:
        """Check, decode, quarantine and commit ``batch`` (raises ``LiveError`` if it cannot)."""
        stale = stale_partitions(batch.ranges, self.sink.live_offsets(), self.fallback)
        ranges = tuple(r for r in batch.ranges if r.partition not in stale)
        if not ranges:
            return BatchOutcome(None, stale)
        parts, offsets, values = batch.columns(without=stale)
        data, bad = self.decoder.decode_columns(
            parts, offsets, values, self.schema, self.transform, "live"
        )
        self.quarantine.write(bad)
        crash_point("live.mid_batch")  # decoded and quarantined, not committed
        record, data = self._commit(data, ranges, stale)
        if record is None:
            return BatchOutcome(None, stale)
        crash_point("live.after_commit")  # committed, the loop's bookkeeping not done
        done = {r.partition for r in record.token.ranges}
        kept = tuple(q for q in bad if q.partition in done)
        return BatchOutcome(record, stale, data.num_rows, kept)

    def _commit(
        self, data: pa.Table, ranges: tuple[OffsetRange, ...], stale: dict[PartitionId, Offset]
    ) -> tuple[CommitRecord | None, pa.Table]:
        """Append with retries; partitions found stale are added to ``stale`` and dropped."""
        pending = _Pending(data, ranges)

        def on_retry(attempt: int, exc: BaseException, wait: float) -> None:
            log.info("live commit attempt %d failed, retry in %.3fs: %s", attempt, wait, exc)

        try:
            record = call_with_retry(
                lambda: self._attempt(pending, stale),
                live_retry(self.max_attempts),
                sleep=self.sleep,
                on_retry=on_retry,
                retry_on=lambda exc: isinstance(exc, _RETRIED),
            )
        except _RETRIED as exc:
            raise LiveError(
                f"job={self.job_id}: live commit failed after {self.max_attempts} attempts "
                f"(last: {type(exc).__name__}: {exc})",
                hint="the batch was not committed; restart the live consumer",
            ) from exc
        return record, pending.data

    def _attempt(self, pending: _Pending, stale: dict[PartitionId, Offset]) -> CommitRecord | None:
        """One append of what is pending; ``None`` when every partition turned out stale."""
        if not pending.ranges:
            return None
        token = CommitToken(
            self.job_id, slice_id_for(pending.ranges), 1, Epoch(self.epoch), "live", pending.ranges
        )
        try:
            return self.sink.append_live(pending.data, token)
        except CommitOutcomeUnknownError as exc:
            log.warning("live commit outcome unknown, looking the token up: %s", exc)
            found = self.sink.find_commit(token.job_id, token.slice_id)
            if found is not None:
                return found
            raise
        except CommitConflictError:
            moved = stale_partitions(pending.ranges, self.sink.live_offsets(), self.fallback)
            if moved:
                stale.update(moved)
                pending.ranges = tuple(r for r in pending.ranges if r.partition not in moved)
                pending.data = without_partitions(pending.data, moved)
                if not pending.ranges:
                    return None
            raise


_RETRIED = (CommitConflictError, CommitOutcomeUnknownError)


def without_partitions(data: pa.Table, partitions: Mapping[PartitionId, Offset]) -> pa.Table:
    """``data`` without the rows of ``partitions`` (by the lineage partition column)."""
    drop = pa.array(sorted(int(p) for p in partitions), pa.int32())
    mask = pc.invert(pc.is_in(data[lineage.PARTITION], value_set=drop))
    return data.filter(mask)
