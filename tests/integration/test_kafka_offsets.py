"""Batched offset queries against the real broker agree with per-partition watermark queries.

The topic has a moved log start (delete_records), committed and aborted transactions (offsets
are sparse) and one transaction left open (last stable offset below the high watermark).
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from coordinator.core.errors import ConfigError, LiveError
from coordinator.core.values import Offset, PartitionId
from coordinator.testing.pytest_plugin import TopicFactory
from stream.kafka.offsets import TopicOffsets

pytestmark = pytest.mark.integration


def _transaction(bootstrap: str, topic: str, partition: int, n: int, *, end: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": uuid.uuid4().hex})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(n):
        producer.produce(topic, f"v{i}".encode(), partition=partition)
    producer.flush(30)
    if end == "commit":
        producer.commit_transaction(30)
    elif end == "abort":
        producer.abort_transaction(30)
    return producer  # "open": the caller keeps it open, then aborts it


def _per_partition(bootstrap: str, topic: str, isolation: str) -> dict[int, tuple[int, int]]:
    """The old way: one watermark request per partition on a consumer."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "isolation.level": isolation}
    )
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            for p in range(3)
        }
    finally:
        consumer.close()


def test_batched_offsets_equal_per_partition_watermarks(
    kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(partitions=3)
    _transaction(kafka_bootstrap, topic, 0, 12, end="commit")
    _transaction(kafka_bootstrap, topic, 1, 5, end="abort")
    _transaction(kafka_bootstrap, topic, 1, 4, end="commit")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for fut in admin.delete_records([TopicPartition(topic, 0, 5)]).values():
        fut.result(30)
    open_tx = _transaction(kafka_bootstrap, topic, 2, 3, end="open")
    try:
        uncommitted = _per_partition(kafka_bootstrap, topic, "read_uncommitted")
        committed = _per_partition(kafka_bootstrap, topic, "read_committed")
        offsets = TopicOffsets({"bootstrap.servers": kafka_bootstrap}, topic)
        parts = offsets.partitions()
        read = offsets.read(parts)
        lag = offsets.lag({PartitionId(0): Offset(10)}, {PartitionId(1): Offset(2)})
        singles = (
            offsets.watermarks(parts),
            offsets.log_starts(parts),
            offsets.high_watermarks(parts),
            offsets.last_stable(parts),
        )
    finally:
        open_tx.abort_transaction(30)
    assert parts == [0, 1, 2]
    assert {r.partition: (r.log_start, r.hwm) for r in read} == uncommitted
    assert {r.partition: r.last_stable for r in read} == {p: hi for p, (_, hi) in committed.items()}
    # what the broker holds: log start moved on 0, markers take offsets, 2 has an open tx
    assert [(r.log_start, r.hwm, r.last_stable) for r in read] == [
        (5, 13, 13),
        (0, 11, 11),
        (0, 3, 0),
    ]
    assert singles == (
        uncommitted,
        {0: 5, 1: 0, 2: 0},
        {0: 13, 1: 11, 2: 3},
        {0: 13, 1: 11, 2: 0},
    )
    assert lag == {0: 3, 1: 9, 2: 3}  # table position, else start offset, else log start


def test_missing_topic_is_a_config_error_and_an_empty_query_asks_nothing(
    kafka_bootstrap: str,
) -> None:
    offsets = TopicOffsets(
        {"bootstrap.servers": kafka_bootstrap}, f"no-such-{uuid.uuid4().hex}", error=LiveError
    )
    with pytest.raises(ConfigError, match="does not exist"):
        offsets.partitions()
    assert offsets.read([]) == []


def test_unreachable_broker_raises_the_callers_error(unused_tcp_port_closed: str) -> None:
    offsets = TopicOffsets(
        {"bootstrap.servers": unused_tcp_port_closed}, "orders", timeout_s=1.5, error=LiveError
    )
    with pytest.raises(LiveError, match=f"bootstrap={unused_tcp_port_closed}: broker unreachable"):
        offsets.partitions()
    with pytest.raises(LiveError, match="partition=0: hwm unavailable"):
        offsets.high_watermarks([PartitionId(0)])


@pytest.fixture
def unused_tcp_port_closed() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"
