"""The batched cut (chunked offset requests, concurrent tail consumers) reads exactly what the
per-partition cut read: offsets, last stable offsets, the tail records and the watermark.

The topic mixes everything that makes offsets sparse or a tail unusual: committed and aborted
transactions (markers take the last offsets), an open transaction (LSO below hwm), a log start
moved by delete_records, an empty partition, a partition longer than the tail window whose
largest event time lies outside the window. The reference is the code the cut ran before:
per-partition watermark queries and one consumer assigned to every tail.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from coordinator.core.errors import BrokerError
from coordinator.core.jobspec import JobSpec, parse_job
from coordinator.core.values import Offset, PartitionId
from coordinator.plan import cut as cut_mod
from coordinator.testing.pytest_plugin import TopicFactory
from stream.decode.base import RawMessage
from stream.kafka import offsets as offsets_mod
from stream.kafka import tail as tail_mod

pytestmark = pytest.mark.integration

BASE_MS = 1_704_067_200_000  # 2024-01-01
PARTS = 7


def _json(i: int, ts_ms: int) -> bytes:
    return json.dumps({"order_id": i, "ts": ts_ms}).encode()


def _job(bootstrap: str, topic: str) -> JobSpec:
    doc = {
        "job": {"id": "cut-batched"},
        "stream": {"bootstrap": bootstrap, "topic": topic},
        "schema": {"fields": {"order_id": "int64", "ts": "timestamp_ms"}, "event_time": "ts"},
        "table": {"format": "lance", "uri": "unused.lance"},
    }
    return parse_job(doc, base_dir=Path(tempfile.gettempdir()), default_id="cut-batched")


def _transaction(bootstrap: str, topic: str, partition: int, stamps: list[int], *,
                 end: str) -> Producer:  # fmt: skip
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": uuid.uuid4().hex})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i, ts in enumerate(stamps):
        producer.produce(topic, _json(i, ts), partition=partition)
    producer.flush(30)
    if end == "commit":
        producer.commit_transaction(30)
    elif end == "abort":
        producer.abort_transaction(30)
    return producer  # "open": the caller aborts it after the cut


def _fill(bootstrap: str, topic: str) -> Producer:
    """The topic's records; returns the producer of the transaction left open (partition 5)."""
    plain = Producer({"bootstrap.servers": bootstrap})
    # 0: 30 records; the largest event time sits at offset 9, just outside the 20-record tail window
    for i in range(30):
        plain.produce(topic, _json(i, BASE_MS + (9_000_000 if i == 9 else i * 1000)), partition=0)
    # 1: empty.  4: 10 records, then the log start moved to 7.  6: one record
    for i in range(10):
        plain.produce(topic, _json(i, BASE_MS + 40_000 + i), partition=4)
    plain.produce(topic, _json(0, BASE_MS + 60_000), partition=6)
    plain.flush(30)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.delete_records([TopicPartition(topic, 4, 7)]).values():
        fut.result(30)
    # 2: a committed transaction (its marker is the last offset)
    _transaction(bootstrap, topic, 2, [BASE_MS + 70_000, BASE_MS + 71_000], end="commit")
    # 3: committed, then aborted records carrying the largest event time of every tail window
    _transaction(bootstrap, topic, 3, [BASE_MS + 80_000], end="commit")
    _transaction(bootstrap, topic, 3, [BASE_MS + 500_000, BASE_MS + 1000], end="abort")
    # 5: a transaction left open while the cut is read
    return _transaction(bootstrap, topic, 5, [BASE_MS + 90_000, BASE_MS + 91_000], end="open")


def _per_partition(bootstrap: str, topic: str, isolation: str) -> dict[int, tuple[int, int]]:
    """The per-partition way: one watermark request per partition."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "isolation.level": isolation}
    )
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            for p in range(PARTS)
        }
    finally:
        consumer.close()


def _old_tails(bootstrap: str, topic: str, cuts: dict[int, tuple[int, int]]) -> list[RawMessage]:
    """The tail read the cut did before: one consumer assigned to every non-empty partition at
    ``max(log_start, hwm - 20)``, done at ``hwm - 1`` or after 3 s."""
    tails = [TopicPartition(topic, p, max(lo, hi - 20)) for p, (lo, hi) in cuts.items() if hi > lo]
    consumer: Any = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                              "isolation.level": "read_uncommitted", "enable.auto.commit": False})  # fmt: skip
    msgs: list[RawMessage] = []
    try:
        consumer.assign(tails)
        deadline = time.monotonic() + 3.0
        remaining = {tp.partition for tp in tails}
        while remaining and time.monotonic() < deadline:
            for m in consumer.consume(500, 0.2):
                if m.error() is not None or m.offset() >= cuts[m.partition()][1]:
                    continue
                ts_type, ts = m.timestamp()
                msgs.append(RawMessage(m.partition(), m.offset(), m.value(), m.key(),
                                       ts if ts_type else None, tuple(m.headers() or ()) or None))  # fmt: skip
                if m.offset() >= cuts[m.partition()][1] - 1:
                    remaining.discard(m.partition())
    finally:
        consumer.close()
    return msgs


def _key(msgs: list[RawMessage]) -> list[tuple[int, int, bytes | None]]:
    return sorted((m.partition, m.offset, m.value) for m in msgs)


def test_batched_cut_equals_the_per_partition_cut(
    kafka_bootstrap: str, kafka_topic: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = kafka_topic(partitions=PARTS)
    open_tx = _fill(kafka_bootstrap, topic)
    job = _job(kafka_bootstrap, topic)
    try:
        uncommitted = _per_partition(kafka_bootstrap, topic, "read_uncommitted")
        committed = _per_partition(kafka_bootstrap, topic, "read_committed")
        old = _old_tails(kafka_bootstrap, topic, uncommitted)
        default = cut_mod.read_cut(job)
        # tiny chunks: several ListOffsets requests per kind, several tail consumers at once
        monkeypatch.setattr(offsets_mod, "CHUNK", 2)
        monkeypatch.setattr(tail_mod, "PER_CONSUMER", 2)
        chunked = cut_mod.read_cut(job)
        ranges = {PartitionId(p): (Offset(max(lo, hi - 20)), Offset(hi))
                  for p, (lo, hi) in uncommitted.items()}  # fmt: skip
        tails = tail_mod.read_tails(job.kafka_config(), topic, ranges, seconds=10)
    finally:
        open_tx.abort_transaction(30)
    # what the broker holds (markers take offsets; 4's log start moved; 5 is open)
    assert uncommitted == {0: (0, 30), 1: (0, 0), 2: (0, 3), 3: (0, 5), 4: (7, 10),
                           5: (0, 2), 6: (0, 1)}  # fmt: skip
    assert committed[5] == (0, 0)
    for reading in (default, chunked):
        assert {c.partition: (c.log_start, c.hwm) for c in reading.partitions} == uncommitted
        assert dict(reading.last_stable) == {p: hi for p, (_, hi) in committed.items()}
        # the aborted records of 3 count (read uncommitted); 0's offset 9 is outside the window
        assert reading.watermark_ms == BASE_MS + 500_000
    assert tails.unfinished == frozenset()
    assert _key(tails.records) == _key(old)
    assert len(old) == 20 + 2 + 3 + 3 + 2 + 1  # 0, 2, 3 (1 committed + 2 aborted), 4, 5, 6
    assert cut_mod._max_event_time(job, old) == BASE_MS + 500_000


def test_cut_right_after_topic_creation_waits_for_leaders(kafka_bootstrap: str) -> None:
    """A topic created without waiting for its leaders: the cut asks again, never fails."""
    topic = f"cut-fresh-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=40, replication_factor=1)])[topic].result(
        30
    )
    try:
        reading = cut_mod.read_cut(_job(kafka_bootstrap, topic), timeout_s=30)
    finally:
        admin.delete_topics([topic])
    assert [(c.partition, c.log_start, c.hwm) for c in reading.partitions] == [
        (p, 0, 0) for p in range(40)
    ]
    assert reading.watermark_ms is None


class _Leaderless:
    """A consumer whose ``offsets_for_times`` says NOT_LEADER ``times`` times, then answers."""

    def __init__(self, times: int) -> None:
        self.times, self.calls = times, 0

    def offsets_for_times(
        self, asked: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        self.calls += 1
        if self.calls <= self.times:
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        return [TopicPartition(tp.topic, tp.partition, 7) for tp in asked]


def test_leaderless_answers_are_asked_again_then_reported(kafka_bootstrap: str) -> None:
    offsets = offsets_mod.TopicOffsets({"bootstrap.servers": kafka_bootstrap}, "t", timeout_s=1.0)
    fake = _Leaderless(times=3)
    assert offsets._ask(fake, [PartitionId(0), PartitionId(1)], "hwm") == {0: 7, 1: 7}
    assert fake.calls == 4
    with pytest.raises(BrokerError, match=r"partition=0: hwm unavailable: no leader serves the "
                       r"partition yet \(.*\), still after 1s"):  # fmt: skip
        offsets._ask(_Leaderless(times=10**6), [PartitionId(0)], "hwm")
