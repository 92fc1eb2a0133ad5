"""The live consumer: Kafka from the cut onwards into the table, exactly once (DESIGN §1-§3).

Start positions come from the table (``sink.live_offsets()``), else from the ``start_offsets``
given by the caller (the cut's ``hwm``). Records are buffered in micro-batches (see
:class:`~stream.live_core.BatchLimits`), decoded with the shared :func:`decode_batch`,
malformed ones are produced to the dead-letter topic first, then the batch is appended with
its offset ranges in one table commit that is conditional on the table's current offsets.
Consumer-group offsets are committed after the table commit, for monitoring only.

Exactly once: a batch covers ``[table offset, last + 1)`` per partition and the sink refuses a
range that does not start at the table's current offset, so after a crash, a rebalance or a
zombie consumer a range is written by at most one process, and never skipped.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from coordinator import lineage
from coordinator.errors import CommitConflictError, CommitOutcomeUnknownError, LiveError
from coordinator.ports import CommitRecord
from coordinator.values import CommitToken, Epoch, Offset, OffsetRange, PartitionId
from stream.decode import Quarantined, Transform, decode_columns
from stream.live_core import BatchLimits, LiveBook, stale_partitions, start_positions

log = logging.getLogger(__name__)

_CONSUME_MAX = 5000
_POLL_S = 0.2
_REPORT_EVERY_S = 2.0


class LiveSink(Protocol):
    """The part of :class:`coordinator.ports.TableSink` the live consumer uses."""

    def append_live(self, data: pa.Table, token: CommitToken) -> CommitRecord: ...

    def live_offsets(self) -> dict[PartitionId, Offset]: ...

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None: ...


class QuarantineSink(Protocol):
    """Where malformed records go; ``write`` returns only once they are durable."""

    def write(self, records: Sequence[Quarantined]) -> None: ...


@dataclass(frozen=True)
class LiveSettings:
    """What one live consumer process does."""

    job_id: str
    topic: str
    group: str
    schema: pa.Schema
    limits: BatchLimits
    epoch: int = 1
    partitions: tuple[int, ...] | None = None  # explicit assignment instead of subscribe
    max_commit_attempts: int = 50


@dataclass
class LiveProgress:
    """Counters reported through the progress callback (and the Prometheus endpoint)."""

    committed: dict[PartitionId, Offset] = field(default_factory=dict)
    lag: dict[PartitionId, int] = field(default_factory=dict)
    high: dict[PartitionId, Offset] = field(default_factory=dict)
    records: int = 0
    quarantined: int = 0
    quarantined_by_partition: dict[PartitionId, int] = field(default_factory=dict)
    commits: int = 0
    dropped_batches: int = 0
    last_commit_s: float = 0.0


ProgressCallback = Callable[[LiveProgress], None]


def slice_id_for(ranges: Sequence[OffsetRange]) -> str:
    """Deterministic id of a live batch, e.g. ``live:0@100-200,2@7-9``."""
    return "live:" + ",".join(f"{r.partition}@{r.start}-{r.end}" for r in ranges)


def consumer_config(kafka_conf: Mapping[str, str], group: str) -> dict[str, Any]:
    """librdkafka settings of the live consumer on top of ``kafka_conf``."""
    return {
        **kafka_conf,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "error",
        "enable.partition.eof": False,
        "partition.assignment.strategy": "range",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 300000,
    }


class LiveConsumer:
    """A long-running consumer writing micro-batches to a :class:`LiveSink` exactly once."""

    def __init__(
        self,
        settings: LiveSettings,
        kafka_conf: Mapping[str, str],
        sink: LiveSink,
        transform: Transform,
        start_offsets: Mapping[PartitionId, Offset],
        quarantine: QuarantineSink,
        on_progress: ProgressCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self._conf = dict(kafka_conf)
        self._sink = sink
        self._transform = transform
        self._fallback = dict(start_offsets)
        self._quarantine = quarantine
        self._on_progress = on_progress
        self._clock = clock
        self._book = LiveBook()
        self.progress = LiveProgress()
        self._stop = stop_event or threading.Event()
        self._consumer: Any = None
        self._last_report = 0.0

    def stop(self) -> None:
        """Ask :meth:`run` to flush, commit and return (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> LiveProgress:
        """Consume until :meth:`stop`; the in-flight batch is flushed before returning."""
        self._consumer = Consumer(consumer_config(self._conf, self.settings.group))
        try:
            self._start()
            while not self._stop.is_set():
                self._poll_once()
            self.flush(force=True)
            self.report(force=True)
        finally:
            self._consumer.close()
        return self.progress

    def _start(self) -> None:
        topic = self.settings.topic
        if self.settings.partitions is not None:
            self._assign([TopicPartition(topic, p) for p in self.settings.partitions])
        else:
            self._consumer.subscribe(
                [topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )

    def _poll_once(self) -> None:
        msgs = self._consumer.consume(_CONSUME_MAX, _POLL_S)
        now = self._clock()
        by_partition: dict[int, tuple[list[int], list[bytes | None]]] = {}
        for m in msgs:
            if m.error() is not None:
                self._on_error(m.error())
                continue
            entry = by_partition.get(m.partition())
            if entry is None:
                entry = by_partition[m.partition()] = ([], [])
            entry[0].append(m.offset())
            entry[1].append(m.value())
        for p, (offsets, values) in by_partition.items():
            self._book.add_many(p, offsets, values, now)
        if self._book.due(self.settings.limits, now):
            self.flush()
        self.report()

    def _on_error(self, err: Any) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal() or err.code() == KafkaError._AUTO_OFFSET_RESET:
            raise LiveError(
                f"topic={self.settings.topic}: consumer error {err}",
                hint="if offsets are out of range, retention deleted live data: re-plan",
            )
        log.warning("consumer error (retrying): %s", err)

    # -- rebalancing -------------------------------------------------------------------------

    def _positions_for(self, partitions: Sequence[int]) -> dict[PartitionId, Offset]:
        try:
            return start_positions(partitions, self._sink.live_offsets(), self._fallback)
        except KeyError as exc:
            raise LiveError(
                f"job={self.settings.job_id} topic={self.settings.topic}: {exc.args[0]}"
            ) from None

    def _assign(self, tps: list[Any]) -> None:
        positions = self._positions_for([tp.partition for tp in tps])
        self._book.assign(positions)
        for tp in tps:
            tp.offset = positions[PartitionId(tp.partition)]
        self._consumer.assign(tps)
        log.info("assigned %s", {p: int(o) for p, o in sorted(positions.items())})

    def _on_assign(self, consumer: Any, tps: list[Any]) -> None:
        self._assign(tps)

    def _on_revoke(self, consumer: Any, tps: list[Any]) -> None:
        try:
            self.flush(force=True)
        except LiveError as exc:
            log.warning("flush on revoke failed, batch discarded (it will be re-read): %s", exc)
        dropped = self._book.revoke([tp.partition for tp in tps])
        log.info("revoked %s (discarded %d buffered)", [tp.partition for tp in tps], dropped)

    def _on_lost(self, consumer: Any, tps: list[Any]) -> None:
        dropped = self._book.revoke([tp.partition for tp in tps])
        log.warning("lost %s (discarded %d buffered)", [tp.partition for tp in tps], dropped)

    def _reseek(self, positions: Mapping[PartitionId, Offset]) -> None:
        dropped = self._book.reseek(positions)
        self.progress.dropped_batches += 1
        log.warning("stale batch for %s dropped (%d records), re-seeking", dict(positions), dropped)
        for p, off in positions.items():
            if p in self._book.positions:
                try:
                    self._consumer.seek(TopicPartition(self.settings.topic, p, off))
                except KafkaException as exc:
                    log.warning("seek partition=%s failed: %s", p, exc)

    # -- committing --------------------------------------------------------------------------

    def flush(self, force: bool = False) -> CommitRecord | None:
        """Commit the in-flight batch now (``force``: regardless of the batch limits)."""
        if self._book.size == 0:
            return None
        if not force and not self._book.due(self.settings.limits, self._clock()):
            return None
        stale = stale_partitions(self._book.ranges(), self._sink.live_offsets(), self._fallback)
        if stale:
            self._reseek(stale)
        ranges = self._book.ranges()
        if not ranges:
            return None
        parts, offsets, values = self._book.columns()
        data, bad = decode_columns(
            parts, offsets, values, self.settings.schema, self._transform, "live"
        )
        self._quarantine.write(bad)
        record = self._commit(data, ranges)
        if record is not None:
            self._after_commit(record, data.num_rows, bad)
        return record

    def _commit(self, data: pa.Table, ranges: tuple[OffsetRange, ...]) -> CommitRecord | None:
        for attempt in range(1, self.settings.max_commit_attempts + 1):
            token = CommitToken(
                self.settings.job_id,
                slice_id_for(ranges),
                1,
                Epoch(self.settings.epoch),
                "live",
                ranges,
            )
            try:
                return self._sink.append_live(data, token)
            except CommitOutcomeUnknownError as exc:
                log.warning("live commit outcome unknown, looking the token up: %s", exc)
                found = self._sink.find_commit(token.job_id, token.slice_id)
                if found is not None:
                    return found
            except CommitConflictError as exc:
                log.info("live commit conflict (attempt %d): %s", attempt, exc)
                stale = stale_partitions(ranges, self._sink.live_offsets(), self._fallback)
                if stale:
                    self._reseek(stale)
                    ranges = tuple(r for r in ranges if r.partition not in stale)
                    data = _without_partitions(data, stale)
                    if not ranges:
                        return None
                    continue
            _backoff(attempt)
        raise LiveError(
            f"job={self.settings.job_id}: live commit failed after "
            f"{self.settings.max_commit_attempts} attempts",
            hint="the batch was not committed; restart the live consumer",
        )

    def _after_commit(self, record: CommitRecord, rows: int, bad: list[Quarantined]) -> None:
        ranges = record.token.ranges
        now = self._clock()
        self._book.committed(ranges, now)
        p = self.progress
        p.records += rows
        committed_parts = {r.partition for r in ranges}
        for q in bad:
            if q.partition in committed_parts:
                p.quarantined += 1
                qp = PartitionId(q.partition)
                p.quarantined_by_partition[qp] = p.quarantined_by_partition.get(qp, 0) + 1
        p.commits += 1
        p.last_commit_s = time.time()
        for r in ranges:
            p.committed[r.partition] = r.end
        offsets = [TopicPartition(self.settings.topic, r.partition, r.end) for r in ranges]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:  # monitoring only: the table holds the truth
            log.info("group offset commit failed (monitoring only): %s", exc)

    # -- progress ----------------------------------------------------------------------------

    def report(self, force: bool = False) -> None:
        """Refresh lag and call the progress callback (at most every couple of seconds)."""
        now = self._clock()
        if not force and now - self._last_report < _REPORT_EVERY_S:
            return
        self._last_report = now
        for p, pos in list(self._book.positions.items()):
            self.progress.committed.setdefault(p, pos)
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.settings.topic, p), cached=True
                )
            except KafkaException:
                continue
            if high < 0:  # not known yet: no fetch response for this partition so far
                continue
            self.progress.high[p] = Offset(high)
            self.progress.lag[p] = max(0, high - self.progress.committed[p])
        if self._on_progress is not None:
            self._on_progress(self.progress)


def _without_partitions(data: pa.Table, partitions: Mapping[PartitionId, Offset]) -> pa.Table:
    drop = pa.array(sorted(int(p) for p in partitions), pa.int32())
    mask = pc.invert(pc.is_in(data[lineage.PARTITION], value_set=drop))
    return data.filter(mask)


def _backoff(attempt: int) -> None:
    wait = min(2.0, 0.05 * (2 ** min(attempt, 6)))
    time.sleep(wait * random.uniform(0.5, 1.0))
