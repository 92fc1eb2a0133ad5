"""The records just below given end offsets of many partitions, best effort within a deadline.

The cut's event-time watermark decodes the last few records below every partition's ``hwm``
(:mod:`coordinator.plan.cut`). :func:`read_tails` reads every record delivered
``read_uncommitted`` in ``[start, end)`` of each partition (aborted records included; control
records take offsets but are never delivered):

* partitions with nothing to read (``start >= end``) are not asked for;
* at most :data:`PER_CONSUMER` partitions share a consumer, and the consumers fetch
  concurrently, one thread each (one consumer assigned 6.7 k partitions sometimes took 8 to
  30 s to deliver them or to close, on 2 loaded cores; consumers of 1 k to 2.5 k partitions
  took 0.4 to 1.9 s, 2.5 k with the least client CPU);
* a partition is done at its record ``end - 1``, at any record at or past ``end``, or at the
  end of the log (``enable.partition.eof``): a partition ending in a transaction marker or
  compacted away below ``end`` does not wait for the deadline.

What arrives by the deadline is returned with the partitions still unfinished (the caller
decides whether a partial read matters).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from coordinator.core.values import Offset, PartitionId
from stream.decode.base import RawMessage
from stream.kafka import client

#: Partitions assigned to one consumer.
PER_CONSUMER = 2500

#: Consumers fetching at once.
_THREADS = 16


@dataclass(frozen=True)
class Tails:
    """The records read and the partitions not finished by the deadline."""

    records: list[RawMessage]
    unfinished: frozenset[PartitionId]


def read_tails(
    conn: Mapping[str, Any],
    topic: str,
    ranges: Mapping[PartitionId, tuple[Offset, Offset]],
    *,
    seconds: float,
    purpose: str = "tail",
) -> Tails:
    """Every record of ``topic`` delivered read-uncommitted in ``ranges[p] = (start, end)``."""
    items = sorted((p, s, e) for p, (s, e) in ranges.items() if e > s)
    if not items:
        return Tails([], frozenset())
    deadline = time.monotonic() + seconds
    chunks = [items[i : i + PER_CONSUMER] for i in range(0, len(items), PER_CONSUMER)]
    if len(chunks) == 1:
        done = [_read(conn, topic, chunks[0], deadline, purpose)]
    else:
        with ThreadPoolExecutor(min(len(chunks), _THREADS), thread_name_prefix="tail") as pool:
            futures = [pool.submit(_read, conn, topic, c, deadline, purpose) for c in chunks]
            done = [f.result() for f in futures]
    records = [m for got, _ in done for m in got]
    return Tails(records, frozenset(p for _, left in done for p in left))


def _read(
    conn: Mapping[str, Any],
    topic: str,
    chunk: list[tuple[PartitionId, Offset, Offset]],
    deadline: float,
    purpose: str,
) -> tuple[list[RawMessage], set[PartitionId]]:
    """One consumer's partitions: the records below their ends, and those not finished."""
    ends = {p: e for p, _, e in chunk}
    remaining = set(ends)
    out: list[RawMessage] = []
    consumer = client.consumer(
        conn,
        purpose=purpose,
        extras={
            "isolation.level": "read_uncommitted",
            "socket.connection.setup.timeout.ms": 5000,
            "enable.partition.eof": True,
        },
    )
    try:
        consumer.assign([TopicPartition(topic, int(p), int(s)) for p, s, _ in chunk])
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for m in consumer.consume(500, min(0.2, left)):
                p = PartitionId(m.partition())
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(p)
                    continue
                if m.offset() >= ends[p]:
                    remaining.discard(p)
                    continue
                ts_type, ts = m.timestamp()
                out.append(RawMessage(p, m.offset(), m.value(), m.key(),
                                      ts if ts_type else None, tuple(m.headers() or ()) or None))  # fmt: skip
                if m.offset() >= ends[p] - 1:
                    remaining.discard(p)
    finally:
        consumer.close()
    return out, remaining
