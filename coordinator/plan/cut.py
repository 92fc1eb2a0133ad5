"""The cut: the seam between history and live, read from Kafka once per job and epoch.

For every partition the cut stores ``log_start`` (earliest retained offset) and ``hwm`` (the
high watermark: the next offset to be written). The live consumer starts at ``hwm``; the
backfill owns ``[log_start, hwm)``.

read_committed semantics: ``hwm`` is the *high* watermark, read with ``read_uncommitted``
(librdkafka answers a read_committed watermark query with the last stable offset instead).
Records of a transaction that was open when the cut was taken sit below ``hwm``: they belong
to the backfill, which reads ``[log_start, hwm)`` with ``isolation.level=read_committed`` and
must wait until the partition's last stable offset (LSO) reaches ``hwm`` (the transaction
commits or aborts) before a slice ending at ``hwm`` is complete. Aborted records and
transaction markers take offsets but are never delivered: offsets are sparse, so
``hwm - log_start`` is only an upper bound on records. The live side, also read_committed,
sees the same transaction's records at offsets >= ``hwm`` only. The LSO at cut time is logged.

The event-time watermark is for information only (timestamps never define the seam): the
largest event time among the last few records below ``hwm``, decoded with
the job's decoder (:func:`stream.decode.decoder_for`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from coordinator.core.errors import BrokerError, ConfigError
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Cut, Epoch, EventTimeMs, Offset, PartitionCut, PartitionId
from stream.decode import decoder_for
from stream.decode.base import RawMessage
from stream.decode.transform import identity

log = logging.getLogger(__name__)

_TAIL_RECORDS = 20
_TAIL_SECONDS = 2.0


@dataclass(frozen=True)
class CutReading:
    """What the broker said when the cut was read (before it gets an epoch)."""

    topic: str
    partitions: tuple[PartitionCut, ...]
    last_stable: Mapping[PartitionId, Offset]
    taken_at: datetime
    watermark_ms: EventTimeMs | None

    def to_cut(self, job_id: str, epoch: int) -> Cut:
        """The cut of ``job_id`` at ``epoch``."""
        return Cut(
            job_id=job_id,
            topic=self.topic,
            partitions=self.partitions,
            taken_at=self.taken_at,
            epoch=Epoch(epoch),
            watermark_ms=self.watermark_ms,
        )


class _LibrdkafkaLog:
    """Routes librdkafka's own log lines to DEBUG (errors reach the user as exceptions)."""

    _log = logging.getLogger(f"{__name__}.librdkafka")

    def log(self, _level: int, fmt: str, *args: Any) -> None:
        self._log.debug(fmt, *args)


def _consumer(job: JobSpec, isolation: str) -> Any:
    return Consumer(
        {
            "logger": _LibrdkafkaLog(),
            **job.kafka_config(),
            "group.id": f"seamline-cut-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": isolation,
            "socket.connection.setup.timeout.ms": 5000,
        }
    )


def topic_partitions(job: JobSpec, timeout_s: float = 10.0) -> list[PartitionId]:
    """The topic's partitions; ``ConfigError`` if it does not exist, ``BrokerError`` if the
    broker cannot be reached within ``timeout_s``."""
    consumer = _consumer(job, "read_uncommitted")
    try:
        return _partitions(consumer, job, timeout_s)
    finally:
        consumer.close()


def _partitions(consumer: Any, job: JobSpec, timeout_s: float) -> list[PartitionId]:
    topic, bootstrap = job.stream.topic, job.stream.bootstrap
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerError(
            f"bootstrap={bootstrap}: broker unreachable within {timeout_s:g}s ({exc.args[0]})",
            hint="check stream.bootstrap and that the broker is running",
        ) from None
    tmeta = meta.topics.get(topic)
    code = tmeta.error.code() if tmeta is not None and tmeta.error is not None else None
    if tmeta is None or code == KafkaError.UNKNOWN_TOPIC_OR_PART or not tmeta.partitions:
        raise ConfigError(
            f"key=stream.topic: topic={topic} does not exist on bootstrap={bootstrap}",
            hint="create the topic or fix stream.topic in the job file",
        )
    if code is not None:
        raise BrokerError(f"topic={topic}: metadata error {tmeta.error.str()}")
    return sorted(PartitionId(p) for p in tmeta.partitions)


def _watermarks(
    consumer: Any, topic: str, partitions: list[PartitionId], timeout_s: float
) -> dict[PartitionId, tuple[Offset, Offset]]:
    out: dict[PartitionId, tuple[Offset, Offset]] = {}
    for p in partitions:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=timeout_s, cached=False
            )
        except KafkaException as exc:
            raise BrokerError(
                f"topic={topic} partition={p}: watermarks unavailable ({exc.args[0]})",
                hint="check the broker is reachable, then retry",
            ) from None
        out[p] = (Offset(max(0, low)), Offset(max(0, high)))
    return out


def read_log_starts(job: JobSpec, timeout_s: float = 10.0) -> dict[PartitionId, Offset]:
    """The current earliest retained offset per partition (for retention-loss checks)."""
    consumer = _consumer(job, "read_uncommitted")
    try:
        parts = _partitions(consumer, job, timeout_s)
        marks = _watermarks(consumer, job.stream.topic, parts, timeout_s)
    finally:
        consumer.close()
    return {p: low for p, (low, _high) in marks.items()}


def read_cut(job: JobSpec, timeout_s: float = 10.0, *, watermark: bool = True) -> CutReading:
    """Read ``log_start``/``hwm`` per partition (and the LSO and event-time watermark)."""
    topic = job.stream.topic
    uncommitted = _consumer(job, "read_uncommitted")
    try:
        parts = _partitions(uncommitted, job, timeout_s)
        taken_at = datetime.now(UTC)
        marks = _watermarks(uncommitted, topic, parts, timeout_s)
    finally:
        uncommitted.close()
    committed = _consumer(job, "read_committed")
    try:
        stable = {p: hi for p, (_lo, hi) in _watermarks(committed, topic, parts, timeout_s).items()}
    finally:
        committed.close()
    cuts = tuple(PartitionCut(p, lo, hi) for p, (lo, hi) in sorted(marks.items()))
    for pc_ in cuts:
        if stable[pc_.partition] < pc_.hwm:
            log.info(
                "topic=%s partition=%d: open transactions, lso=%d < hwm=%d; the backfill "
                "waits for the lso to reach hwm",
                topic,
                pc_.partition,
                stable[pc_.partition],
                pc_.hwm,
            )
    mark = _event_time_watermark(job, cuts) if watermark else None
    return CutReading(topic, cuts, stable, taken_at, mark)


def floor_at_live(reading: CutReading, live: Mapping[PartitionId, Offset]) -> CutReading:
    """``reading`` with every partition's ``hwm`` raised to the table's live offset.

    A new cut never puts ``hwm`` below offsets the table already holds from live (DESIGN §1):
    the backfill would own records the live side already wrote (overlap), and a live
    consumer restarting at the table's offset would write them a second time. The broker's
    high watermark is normally at or above the table's live offset; it is not when a live
    batch committed records newer than the watermark that was read.
    """
    parts = []
    for c in reading.partitions:
        floor = live.get(c.partition)
        if floor is not None and floor > c.hwm:
            log.info(
                "topic=%s partition=%d: hwm raised from %d to the table's live offset %d",
                reading.topic, c.partition, c.hwm, floor,
            )  # fmt: skip
            c = PartitionCut(c.partition, c.log_start, floor)
        parts.append(c)
    return replace(reading, partitions=tuple(parts))


def take_cut(job: JobSpec, epoch: int, timeout_s: float = 10.0) -> Cut:
    """Read the cut of ``job`` from the broker and give it ``epoch`` (nothing is stored)."""
    return read_cut(job, timeout_s).to_cut(job.job_id, epoch)


def _event_time_watermark(job: JobSpec, cuts: tuple[PartitionCut, ...]) -> EventTimeMs | None:
    """Largest event time among the last few records below ``hwm`` (best effort)."""
    tails = [
        TopicPartition(job.stream.topic, c.partition, max(c.log_start, c.hwm - _TAIL_RECORDS))
        for c in cuts
        if c.hwm > c.log_start
    ]
    if not tails:
        return None
    hwms = {c.partition: c.hwm for c in cuts}
    consumer = _consumer(job, "read_uncommitted")
    msgs: list[RawMessage] = []
    try:
        consumer.assign(tails)
        deadline = time.monotonic() + _TAIL_SECONDS
        remaining = {tp.partition for tp in tails}
        while remaining and time.monotonic() < deadline:
            for m in consumer.consume(500, 0.2):
                if m.error() is not None or m.offset() >= hwms[m.partition()]:
                    continue
                msgs.append(RawMessage(m.partition(), m.offset(), m.value(), m.key()))
                if m.offset() >= hwms[m.partition()] - 1:
                    remaining.discard(m.partition())
    finally:
        consumer.close()
    return _max_event_time(job, msgs)


def _max_event_time(job: JobSpec, msgs: list[RawMessage]) -> EventTimeMs | None:
    if not msgs:
        return None
    decoder = decoder_for(job.stream.format, job)
    table, _bad = decoder.decode(msgs, job.schema_.arrow_schema(), identity, side="backfill")
    column = table.column(job.schema_.event_time)
    if table.num_rows == 0 or column.null_count == table.num_rows:
        return None
    if pa.types.is_date(column.type):
        column = column.cast(pa.timestamp("ms"))
    value = pc.max(column.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())).as_py()
    return None if value is None else EventTimeMs(int(value))
