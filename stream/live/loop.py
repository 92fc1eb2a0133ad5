"""The live consumer: Kafka from the cut onwards into the table, exactly once (DESIGN §1-§3).

Start positions come from the table (``sink.live_offsets()``), else from the ``start_offsets``
given by the caller (the cut's ``hwm``); reading never starts below the ``floor`` (the
current cut's ``hwm``, re-read on every assignment: a newer cut hands the offsets below it to
the backfill). Records are buffered in micro-batches (see
:class:`~stream.live.core.BatchLimits`), decoded with the shared :func:`decode_batch`,
malformed ones are produced to the dead-letter topic first, then the batch is appended with
its offset ranges in one table commit that is conditional on the table's current offsets.
Consumer-group offsets are committed after the table commit, for monitoring only.

Exactly once: a batch covers ``[table offset, last + 1)`` per partition and the sink refuses a
range that does not start at the table's current offset, so after a crash, a rebalance or a
zombie consumer a range is written by at most one process, and never skipped.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import pyarrow as pa
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from coordinator.core.errors import LiveError, SeamlineError
from coordinator.core.ports import CommitRecord
from coordinator.core.values import Offset, PartitionId
from stream.decode import RecordDecoder
from stream.decode.json import DECODER as JSON_DECODER
from stream.decode.kafka_meta import Headers, carry_all, kafka_fields
from stream.decode.tombstones import carries_null_values
from stream.kafka import client
from stream.live.core import BatchLimits, LiveBook, start_positions
from stream.live.writer import (
    BatchOutcome,
    BatchWriter,
    LiveSink,
    QuarantineSink,
    slice_id_for,
)

__all__ = [
    "LiveConsumer",
    "LiveProgress",
    "LiveSettings",
    "LiveSink",
    "ProgressCallback",
    "QuarantineSink",
    "consumer_config",
    "slice_id_for",
]

log = logging.getLogger(__name__)

#: Messages per ``consume()`` call. Measured (300k small records, tuned fetch): 5,000 costs
#: 1.3 us/message of CPU, 20,000-50,000 cost 1.5-1.8 (more Message objects alive at once).
_CONSUME_MAX = 5_000
_POLL_S = 0.2
_REPORT_EVERY_S = 2.0

#: librdkafka fetch settings of the live consumer (a job's ``kafka`` settings override them).
#: The 1 MB default per-partition fetch caps a consumer at ~130 k msg/s of small records (16 MB:
#: ~460 k msg/s read rate); the prefetch queue stays bounded by ``queued.max.messages.kbytes``.
FETCH_DEFAULTS: dict[str, Any] = {
    "fetch.max.bytes": 64 << 20,
    "max.partition.fetch.bytes": 16 << 20,
    "queued.max.messages.kbytes": 64 << 10,
}


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
    decoder: RecordDecoder = JSON_DECODER  # the job's [stream] format


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


#: The live consumer's own settings on top of the builder's (read committed, no auto-commit).
_LIVE: dict[str, Any] = {
    "auto.offset.reset": "error",
    "enable.partition.eof": False,
    "partition.assignment.strategy": "range",
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 1000,
    "max.poll.interval.ms": 300000,
}


def consumer_config(kafka_conf: Mapping[str, str], group: str) -> dict[str, Any]:
    """librdkafka settings of the live consumer: fetch defaults, ``kafka_conf``, then ours."""
    return client.consumer_config({**FETCH_DEFAULTS, **kafka_conf}, group=group, extras=_LIVE)


class LiveConsumer:
    """A long-running consumer writing micro-batches to a :class:`LiveSink` exactly once.

    Pipelined: batch N is committed on a background thread while batch N+1 is read (at most
    one commit in flight, at most ``limits.hard_records`` buffered behind it). Positions only
    move when a commit has landed; a batch is only taken once the previous one is settled, so
    it always starts where the table ends. When a commit drops partitions (the table moved:
    another consumer won them) the records buffered behind them are discarded and the
    partitions re-read from the table's offset.
    """

    def __init__(
        self,
        settings: LiveSettings,
        kafka_conf: Mapping[str, str],
        sink: LiveSink,
        transform: Callable[[pa.Table], pa.Table],
        start_offsets: Mapping[PartitionId, Offset],
        quarantine: QuarantineSink,
        on_progress: ProgressCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        stop_event: threading.Event | None = None,
        floor: Callable[[], Mapping[PartitionId, Offset]] | None = None,
    ) -> None:
        self.settings = settings
        self._meta = bool(kafka_fields(settings.schema))
        self._nulls = carries_null_values(settings.decoder)  # null values keep their key
        self._read_floor = floor
        self._floor: dict[PartitionId, Offset] = {}
        self._conf = dict(kafka_conf)
        self._sink = sink
        self._fallback = dict(start_offsets)
        self._writer = BatchWriter(
            settings.job_id,
            settings.epoch,
            settings.schema,
            transform,
            sink,
            quarantine,
            self._fallback,
            settings.max_commit_attempts,
            decoder=settings.decoder,
        )
        self._on_progress = on_progress
        self._clock = clock
        self._book = LiveBook()
        self.progress = LiveProgress()
        self._stop = stop_event or threading.Event()
        self._consumer: Any = None
        self._committer: ThreadPoolExecutor | None = None
        self._inflight: Future[BatchOutcome] | None = None
        self._last_report = 0.0
        #: An exception raised inside a rebalance callback, re-raised after ``consume()``.
        self._deferred: BaseException | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to flush, commit and return (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> LiveProgress:
        """Consume until :meth:`stop`; the in-flight batches are committed before returning."""
        self._consumer = client.consumer(
            {**FETCH_DEFAULTS, **self._conf}, group=self.settings.group, extras=_LIVE
        )
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="seamline-live-commit")
        try:
            self._start()
            while not self._stop.is_set():
                self._poll_once()
            self.flush(force=True)
            self.report(force=True)
        finally:
            self._committer.shutdown(wait=True)
            self._committer = None
            self._consumer.close()
        return self.progress

    def _start(self) -> None:
        topic = self.settings.topic
        if self.settings.partitions is not None:
            self._assign([TopicPartition(topic, p) for p in self.settings.partitions])
        else:
            self._consumer.subscribe(
                [topic],
                on_assign=self._guarded(self._on_assign),
                on_revoke=self._guarded(self._on_revoke),
                on_lost=self._guarded(self._on_lost),
            )

    def _poll_once(self) -> None:
        if self._inflight is not None and self._inflight.done():
            self._settle()
        msgs = self._consumer.consume(_CONSUME_MAX, _POLL_S)
        self._raise_deferred()
        now = self._clock()
        self._buffer(msgs, now)
        limits = self.settings.limits
        if self._inflight is None:
            if self._book.due(limits, now):
                self._submit(now)
        elif self._book.size >= limits.hard_records:
            self._settle()  # back-pressure: wait for the commit in flight
        self.report()

    def _buffer(self, msgs: list[Any], now: float) -> None:
        """Hand each partition's run of messages to the book in one call."""
        if not msgs:
            return
        errors = list(map(Message.error, msgs))
        if errors.count(None) != len(errors):
            for err in errors:
                if err is not None:
                    self._on_error(err)
            msgs = [m for m, err in zip(msgs, errors, strict=True) if err is None]
        # Messages without an error always have a partition and an offset.
        parts = cast("list[int]", list(map(Message.partition, msgs)))
        offsets = cast("list[int]", list(map(Message.offset, msgs)))
        values = self._values(msgs)
        start = 0
        for p, run in itertools.groupby(parts):  # consume() returns long runs per partition
            end = start + len(list(run))
            offs, vals = offsets[start:end], values[start:end]
            floor = self._floor.get(PartitionId(p))
            if floor is not None and offs[0] < floor:  # below the cut: the backfill's
                keep = [i for i, o in enumerate(offs) if o >= floor]
                offs, vals = [offs[i] for i in keep], [vals[i] for i in keep]
            if offs:
                self._book.add_many(p, offs, vals, now)
            start = end

    def _values(self, msgs: list[Message]) -> list[bytes | None]:
        """The values of ``msgs``, carrying key, headers and timestamp when the job has
        ``[schema.kafka]`` columns (the decoder fills those columns from them)."""
        if not self._meta:
            return list(map(Message.value, msgs))
        return carry_all(
            ((m.value(), m.key(), cast("Headers | None", m.headers()), _stamp(m)) for m in msgs),
            nulls=self._nulls,
        )

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
        self._settle()  # the table must be quiet while the start positions are read
        positions = self._positions_for([tp.partition for tp in tps])
        self._book.assign(positions)
        self._refresh_floor(positions)
        for tp in tps:
            tp.offset = self._start_at(PartitionId(tp.partition), positions[tp.partition])
        self._consumer.assign(tps)
        log.info("assigned %s", {p: int(o) for p, o in sorted(positions.items())})

    def _refresh_floor(self, positions: Mapping[PartitionId, Offset]) -> None:
        """Re-read the current cut's ``hwm`` (the floor): live never reads below it.

        A newer cut (``cut --new-cut``) hands ``[table offset, hwm)`` to the backfill; the
        batch range still starts at the table's offset (so the conditional commit holds)
        but records below the floor are never read, so no offset is written twice.
        """
        if self._read_floor is None:
            return
        floor = {PartitionId(p): Offset(o) for p, o in self._read_floor().items()}
        self._floor.update(floor)
        above = {p: int(floor[p]) for p, o in positions.items() if floor.get(p, o) > o}
        if above:
            log.info("the current cut starts above the table's live offsets: reading from %s", above)

    def _start_at(self, partition: PartitionId, position: Offset) -> Offset:
        return max(position, self._floor.get(partition, position))

    def _guarded(self, callback: Callable[[Any, list[Any]], None]) -> Callable[..., None]:
        """``callback`` as librdkafka may call it: it never raises into the client.

        An exception escaping a rebalance callback is left pending inside ``consume()``, and
        the client's next C call (``KafkaError.code`` on the next error message) then failed
        with a ``SystemError`` that hid the real error, under load, when partitions were
        lost. The exception is kept and re-raised by the poll loop once ``consume()`` has
        returned, so it is handled like any other error of the loop.
        """

        def call(consumer: Any, tps: list[Any]) -> None:
            try:
                callback(consumer, tps)
            except BaseException as exc:  # re-raised by _raise_deferred
                log.debug("rebalance callback %s raised; re-raised after consume()",
                          callback.__name__, exc_info=True)  # fmt: skip
                if self._deferred is None:
                    self._deferred = exc

        return call

    def _raise_deferred(self) -> None:
        if self._deferred is not None:
            exc, self._deferred = self._deferred, None
            raise exc

    def _on_assign(self, consumer: Any, tps: list[Any]) -> None:
        self._assign(tps)

    def _on_revoke(self, consumer: Any, tps: list[Any]) -> None:
        try:
            self.flush(force=True)
        except SeamlineError as exc:  # not committed: the partitions are re-read from the table
            log.warning("flush on revoke failed, batch discarded (it will be re-read): %s", exc)
        dropped = self._book.revoke([tp.partition for tp in tps])
        log.info("revoked %s (discarded %d buffered)", [tp.partition for tp in tps], dropped)

    def _on_lost(self, consumer: Any, tps: list[Any]) -> None:
        try:
            self._settle()  # a commit in flight either lands or is refused by the table
        except SeamlineError as exc:
            log.warning("commit in flight failed while partitions were lost: %s", exc)
        dropped = self._book.revoke([tp.partition for tp in tps])
        log.warning("lost %s (discarded %d buffered)", [tp.partition for tp in tps], dropped)

    def _reseek(self, positions: Mapping[PartitionId, Offset]) -> None:
        self.progress.dropped_batches += 1
        log.warning(
            "stale batch for %s dropped, re-seeking", {p: int(o) for p, o in positions.items()}
        )
        for p, off in positions.items():
            try:
                start = self._start_at(p, off)
                self._consumer.seek(TopicPartition(self.settings.topic, p, start))
            except KafkaException as exc:
                log.warning("seek partition=%s failed: %s", p, exc)

    # -- committing --------------------------------------------------------------------------

    def _submit(self, now: float) -> None:
        """Hand the buffered batch to the commit thread (none may be in flight)."""
        batch = self._book.take(now)
        if self._committer is None:  # not running: commit inline
            done: Future[BatchOutcome] = Future()
            done.set_result(self._writer.write(batch))
            self._inflight = done
        else:
            self._inflight = self._committer.submit(self._writer.write, batch)

    def _settle(self) -> CommitRecord | None:
        """Wait for the commit in flight (if any) and apply its outcome."""
        if self._inflight is None:
            return None
        future, self._inflight = self._inflight, None
        try:
            outcome = future.result()
        except BaseException:
            self._book.settle((), {})  # nothing known to be committed: re-read from positions
            raise
        committed = outcome.record.token.ranges if outcome.record is not None else ()
        seek = self._book.settle(committed, outcome.reseek, self._clock())
        if seek:
            self._reseek(seek)
        if outcome.record is not None:
            self._after_commit(outcome)
        return outcome.record

    def flush(self, force: bool = False) -> CommitRecord | None:
        """Settle the commit in flight, then commit the buffered batch now if due.

        ``force``: regardless of the batch limits. Returns the last commit made, if any.
        """
        record = self._settle()
        if self._book.size == 0:
            return record
        if not force and not self._book.due(self.settings.limits, self._clock()):
            return record
        self._submit(self._clock())
        return self._settle() or record

    def _after_commit(self, outcome: BatchOutcome) -> None:
        assert outcome.record is not None
        ranges = outcome.record.token.ranges
        p = self.progress
        p.records += outcome.rows
        for q in outcome.quarantined:
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


def _stamp(m: Message) -> int | None:
    """The record's timestamp in epoch ms (``None``: the broker has none)."""
    ts_type, ts = m.timestamp()
    return ts if ts_type else None
