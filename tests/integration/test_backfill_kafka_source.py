"""The bounded Kafka reader against a real broker: sparse offsets, aborted transactions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from coordinator.core.errors import SourceError
from coordinator.core.retry import is_retriable
from coordinator.core.values import Offset, OffsetRange, PartitionId
from stream.kafka.reader import iter_kafka_range

pytestmark = pytest.mark.integration


def _topic(bootstrap: str, partitions: int = 1) -> str:
    name = f"bf-src-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


@pytest.fixture
def tx_topic(kafka_bootstrap: str) -> Iterator[tuple[str, dict[int, int]]]:
    """A topic laid out as: 0-2 committed, 3 marker, 4-5 aborted, 6 marker, 7 committed,
    8 marker, 9-10 aborted, 11 marker (the range's last offsets are a control marker)."""
    topic = _topic(kafka_bootstrap)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    value = 0
    for size, commit in ((3, True), (2, False), (1, True), (2, False)):
        producer.begin_transaction()
        for _ in range(size):
            producer.produce(topic, json.dumps({"v": value}).encode(), partition=0)
            value += 1
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    committed = {0: 0, 1: 1, 2: 2, 7: 5}  # offset -> value
    yield topic, committed


def _read(bootstrap: str, topic: str, start: int, end: int, **kw: float) -> dict[int, int]:
    rng = OffsetRange(PartitionId(0), Offset(start), Offset(end))
    out: dict[int, int] = {}
    for batch in iter_kafka_range({"bootstrap.servers": bootstrap}, topic, rng, **kw):  # type: ignore[arg-type]
        for msg in batch:
            assert msg.offset not in out
            assert msg.value is not None
            out[msg.offset] = json.loads(msg.value)["v"]
    return out


def test_reads_exactly_the_committed_records(
    kafka_bootstrap: str, tx_topic: tuple[str, dict[int, int]]
) -> None:
    topic, committed = tx_topic
    assert _read(kafka_bootstrap, topic, 0, 12) == committed


@pytest.mark.parametrize("end", range(13))
def test_stops_exactly_at_every_end(
    kafka_bootstrap: str, tx_topic: tuple[str, dict[int, int]], end: int
) -> None:
    topic, committed = tx_topic
    want = {o: v for o, v in committed.items() if o < end}
    assert _read(kafka_bootstrap, topic, 0, min(end, 12)) == want


def test_starts_inside_an_aborted_run(
    kafka_bootstrap: str, tx_topic: tuple[str, dict[int, int]]
) -> None:
    topic, _ = tx_topic
    assert _read(kafka_bootstrap, topic, 4, 9) == {7: 5}
    assert _read(kafka_bootstrap, topic, 8, 12) == {}


def test_small_batches_cover_the_range(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(25):
        producer.produce(topic, json.dumps({"v": i}).encode(), partition=0)
    producer.flush(30)
    rng = OffsetRange(PartitionId(0), Offset(5), Offset(20))
    batches = list(iter_kafka_range({"bootstrap.servers": kafka_bootstrap}, topic, rng, 4))
    assert [len(b) for b in batches] == [4, 4, 4, 3]
    assert [m.offset for b in batches for m in b] == list(range(5, 20))


def test_unreachable_end_raises_after_the_deadline(
    kafka_bootstrap: str, tx_topic: tuple[str, dict[int, int]]
) -> None:
    topic, _ = tx_topic
    with pytest.raises(SourceError, match="expected to read up to offset 20") as info:
        _read(kafka_bootstrap, topic, 0, 20, timeout_s=1.0)
    assert is_retriable(info.value)  # a read timeout is retried by run and reprocess alike


def test_open_transaction_blocks_until_the_deadline(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"o-{topic}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, json.dumps({"v": i}).encode(), partition=0)
    producer.flush(30)
    try:
        with pytest.raises(SourceError, match="open transaction"):
            _read(kafka_bootstrap, topic, 0, 3, timeout_s=1.0)
    finally:
        producer.abort_transaction(30)
    assert _read(kafka_bootstrap, topic, 0, 4) == {}


def test_never_asks_the_consumer_for_more_records_than_the_range_has_left(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``consume(n, timeout)`` waits its whole timeout while fewer than ``n`` records arrive:
    asking for a full batch on a small range cost every slice a 0.2 s wait."""
    from stream.kafka import client

    topic = _topic(kafka_bootstrap)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for v in range(30):
        producer.produce(topic, json.dumps({"v": v}).encode(), partition=0)
    assert producer.flush(30) == 0
    asked: list[int] = []
    build = client.consumer

    class Recording:
        def __init__(self, inner: object) -> None:
            self._inner = inner

        def consume(self, num: int, timeout: float) -> list[object]:
            asked.append(num)
            return self._inner.consume(num, timeout)  # type: ignore[attr-defined, no-any-return]

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

    monkeypatch.setattr(client, "consumer", lambda *a, **kw: Recording(build(*a, **kw)))
    assert _read(kafka_bootstrap, topic, 10, 20) == {o: o for o in range(10, 20)}
    assert asked and max(asked) <= 10, asked  # the range's 10 offsets, not the 10,000 batch


@pytest.mark.parametrize("start", [0, 9])
def test_a_range_whose_start_was_deleted_is_source_data_loss_never_skipped(
    kafka_bootstrap: str, start: int
) -> None:
    """Records deleted below the log start (retention, ``DeleteRecords``) make the range's
    read fail as data loss (exit 4), instead of silently starting at the new log start."""
    from confluent_kafka import TopicPartition

    from coordinator.core.errors import SourceDataLossError

    topic = _topic(kafka_bootstrap)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for v in range(30):
        producer.produce(topic, json.dumps({"v": v}).encode(), partition=0)
    assert producer.flush(30) == 0
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    done = admin.delete_records([TopicPartition(topic, 0, 10)], request_timeout=30)
    for future in done.values():
        future.result(30)
    with pytest.raises(SourceDataLossError, match=f"partition=0.*offset {start}"):
        _read(kafka_bootstrap, topic, start, 20)
    assert _read(kafka_bootstrap, topic, 10, 20) == {o: o for o in range(10, 20)}
