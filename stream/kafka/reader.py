"""Bounded Kafka offset-range reader (DESIGN §1): ``assign()`` at the start, read committed.

Offsets are sparse: transaction markers and aborted records take offsets, so the reader never
counts records. It stops when it has *seen* the end of the range: a record at or past
``rng.end``, a partition-EOF whose position is at or past ``rng.end``, or a consumer position at
or past it. An EOF below ``rng.end`` means the range is not yet readable (an open transaction
holds the last stable offset back, or the offsets were never produced): the reader keeps
polling until a deadline and then raises :class:`SourceError`. Consumer-group offsets are never
read or committed: every reader gets a throwaway ``group.id``.

Offsets below the partition's log start (deleted by retention or ``DeleteRecords``) are never
skipped: the reader runs with ``auto.offset.reset = error``, so a fetch below the log start is
an out-of-range error, raised as :class:`SourceDataLossError` (exit 4). No watermark request
is made up front: it would cost every slice a broker round trip to learn what the first fetch
says anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from coordinator.core.errors import SourceDataLossError, SourceError
from coordinator.core.retry import transient
from coordinator.core.values import OffsetRange
from stream.decode.base import RawMessage
from stream.kafka import client

log = logging.getLogger(__name__)

_POLL_S = 0.2


#: Settings of a bounded reader on top of the builder's (throwaway group, read committed).
_READER_EXTRAS: dict[str, Any] = {"enable.partition.eof": True, "auto.offset.reset": "error"}


def consumer_config(kafka_conf: Mapping[str, str]) -> dict[str, Any]:
    """Settings for a bounded, group-less, read-committed reader on top of ``kafka_conf``."""
    return client.consumer_config(kafka_conf, purpose="range", extras=_READER_EXTRAS)


@dataclass
class _Progress:
    """Mutable reading state of one range (private to the reader loop)."""

    rng: OffsetRange
    timeout_s: float
    done: bool = False
    deadline: float = field(default=0.0)
    last_seen: int = -1

    def __post_init__(self) -> None:
        self.touch()

    def touch(self) -> None:
        self.deadline = time.monotonic() + self.timeout_s

    def reached(self, position: int) -> None:
        if position >= self.rng.end:
            self.done = True


def _handle_error(msg: Any, topic: str, prog: _Progress) -> None:
    err = msg.error()
    if err.code() == KafkaError._PARTITION_EOF:
        prog.reached(msg.offset())
        return
    if err.code() == KafkaError._AUTO_OFFSET_RESET or err.code() == KafkaError.OFFSET_OUT_OF_RANGE:
        raise SourceDataLossError(
            f"topic={topic} partition={prog.rng.partition}: offset {prog.rng.start} is out of "
            f"range ({err.str()})",
            hint="re-plan the job with a new cut, or load the lost range from an archive",
        )
    if err.fatal() or not err.retriable():
        raise SourceError(f"topic={topic} partition={prog.rng.partition}: {err.str()}")
    log.warning("retriable consumer error: %s", err.str())


def _take(msgs: list[Any], topic: str, prog: _Progress) -> list[RawMessage]:
    out: list[RawMessage] = []
    start, end, last = prog.rng.start, prog.rng.end, prog.last_seen
    arrived = False
    for msg in msgs:
        if msg.error() is not None:
            _handle_error(msg, topic, prog)
            continue
        arrived = True
        offset = msg.offset()
        if offset >= end:
            prog.done = True
            continue
        if offset < start or offset <= last:
            continue  # never yield a record twice, never below the range
        last = offset
        ts_type, ts = msg.timestamp()
        out.append(
            RawMessage(
                msg.partition(),
                offset,
                msg.value(),
                msg.key(),
                ts if ts_type != 0 else None,
                tuple(msg.headers() or ()) or None,
            )
        )
    if arrived:
        prog.touch()  # a record of the partition arrived: progress
    prog.last_seen = last
    return out


def _position(consumer: Any, topic: str, partition: int) -> int:
    (tp,) = consumer.position([TopicPartition(topic, partition)])
    return int(tp.offset)


def iter_kafka_range(
    kafka_conf: Mapping[str, str],
    topic: str,
    rng: OffsetRange,
    batch_size: int = 10_000,
    timeout_s: float = 30.0,
) -> Iterator[list[RawMessage]]:
    """Yield the committed records of ``rng`` (offset order) in lists of at most ``batch_size``.

    Raises ``SourceDataLossError`` when ``rng.start`` is no longer retained and ``SourceError``
    when no progress towards ``rng.end`` is made for ``timeout_s`` seconds.
    """
    if rng.width == 0:
        return
    consumer = client.consumer(kafka_conf, purpose="range", extras=_READER_EXTRAS)
    try:
        consumer.assign([TopicPartition(topic, rng.partition, rng.start)])
        prog = _Progress(rng, timeout_s)
        pending: list[RawMessage] = []
        while not prog.done:
            # never ask for more records than offsets are left in the range: consume() waits
            # its whole timeout for a count the range cannot reach (a fixed cost per slice)
            left = rng.end - max(prog.last_seen + 1, rng.start)
            want = max(1, min(batch_size, left))
            pending.extend(_take(consumer.consume(want, _POLL_S), topic, prog))
            if not prog.done:
                prog.reached(_position(consumer, topic, rng.partition))
            while len(pending) >= batch_size:
                yield pending[:batch_size]
                pending = pending[batch_size:]
            if not prog.done and time.monotonic() > prog.deadline:
                raise transient(
                    SourceError(
                        f"topic={topic} partition={rng.partition}: expected to read up to "
                        f"offset {rng.end}, found no progress for {timeout_s}s after "
                        f"offset {max(prog.last_seen, rng.start - 1)}",
                        hint="an open transaction may hold the last stable offset back; "
                        "check the producer, or raise the timeout",
                    )
                )
        if pending:
            yield pending
    finally:
        consumer.close()
