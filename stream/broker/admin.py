"""Small admin helpers on a broker: create a topic and wait for its leaders, delete topics, and
a one-message produce/consume round trip (``seamline broker smoke``)."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import TYPE_CHECKING

from coordinator.core.errors import BrokerError

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message
    from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)


def create_topic(bootstrap: str, name: str, *, partitions: int = 3,
                 config: dict[str, str] | None = None, timeout: float = 30.0) -> None:
    """Create ``name`` with ``partitions`` partitions (replication 1) and wait for its leaders
    to appear and to answer offset queries.

    Raises:
        BrokerError: the broker refused the topic or its leaders did not serve in time.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.cimpl import NewTopic

    from stream.kafka import client

    admin = client.admin(client.plain(bootstrap))
    topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
    try:
        admin.create_topics([topic], operation_timeout=timeout)[name].result(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"creating topic={name} partitions={partitions} at {bootstrap} "
                          f"failed: {exc}", hint="check the broker log") from exc
    deadline = time.monotonic() + timeout
    _wait_for_leaders(admin, name, partitions, deadline)
    _wait_for_offsets(bootstrap, name, deadline)


def _wait_for_offsets(bootstrap: str, name: str, deadline: float) -> None:
    """Until every partition's leader answers an offset query: a leader listed in the
    metadata may still answer NOT_LEADER_OR_FOLLOWER for a moment (the query asks again with
    backoff until the time left)."""
    from stream.kafka import client
    from stream.kafka.offsets import TopicOffsets

    left = max(0.5, deadline - time.monotonic())
    offsets = TopicOffsets(client.plain(bootstrap), name, timeout_s=left)
    offsets.high_watermarks(offsets.partitions())


def _wait_for_leaders(admin: AdminClient, name: str, partitions: int, deadline: float) -> None:
    from confluent_kafka import KafkaException

    while time.monotonic() < deadline:
        try:
            meta = admin.list_topics(topic=name, timeout=5.0)
        except KafkaException:
            meta = None
        topic = meta.topics.get(name) if meta is not None else None
        if topic is not None and topic.error is None and len(topic.partitions) == partitions \
                and all(p.leader >= 0 for p in topic.partitions.values()):
            return
        time.sleep(0.1)
    raise BrokerError(f"topic={name}: expected {partitions} partitions with leaders, "
                      "they did not appear in time", hint="check the broker log")


def delete_topics(bootstrap: str, names: list[str], *, timeout: float = 30.0) -> None:
    """Delete ``names``; topics already gone are fine.

    Raises:
        BrokerError: the broker refused a deletion.
    """
    if not names:
        return
    from confluent_kafka import KafkaError, KafkaException

    from stream.kafka import client

    admin = client.admin(client.plain(bootstrap))
    for name, future in admin.delete_topics(names, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise BrokerError(f"deleting topic={name} at {bootstrap} failed: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class RoundTrip:
    """The result of producing one message and reading it back."""

    topic: str
    partition: int
    offset: int
    create_s: float
    produce_s: float
    consume_s: float

    @property
    def total_s(self) -> float:
        """Wall time of the whole round trip."""
        return self.create_s + self.produce_s + self.consume_s


def round_trip(bootstrap: str, *, timeout: float = 30.0) -> RoundTrip:
    """Create a fresh topic, produce one message, read it back by offset, delete the topic.

    Raises:
        BrokerError: any step failed, or the message read back differs from the one sent.
    """
    topic = f"seamline-smoke-{uuid.uuid4().hex[:12]}"
    value = f"hello from seamline {uuid.uuid4()}".encode()
    t0 = time.monotonic()
    create_topic(bootstrap, topic, partitions=1, timeout=timeout)
    t1 = time.monotonic()
    partition, offset = _produce_one(bootstrap, topic, value, timeout)
    t2 = time.monotonic()
    _consume_one(bootstrap, topic, partition, offset, value, timeout)
    t3 = time.monotonic()
    delete_topics(bootstrap, [topic], timeout=timeout)
    return RoundTrip(topic, partition, offset, t1 - t0, t2 - t1, t3 - t2)


def _produce_one(bootstrap: str, topic: str, value: bytes, timeout: float) -> tuple[int, int]:
    from stream.kafka import client

    reports: list[tuple[int, int] | str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            reports.append(str(err))
        else:
            reports.append((msg.partition() or 0, msg.offset() or 0))

    producer = client.producer(client.plain(bootstrap), extras={"acks": "all"})
    producer.produce(topic, value=value, key=b"smoke", on_delivery=on_delivery)
    left = producer.flush(timeout)
    if left or not reports or isinstance(reports[0], str):
        raise BrokerError(f"producing to topic={topic} at {bootstrap} failed: "
                          f"{reports[0] if reports else 'no delivery report in time'}")
    return reports[0]


def _consume_one(bootstrap: str, topic: str, partition: int, offset: int, value: bytes,
                 timeout: float) -> None:
    from confluent_kafka import TopicPartition

    from stream.kafka import client

    consumer = client.consumer(client.plain(bootstrap), group=f"{topic}-reader")
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        msg = consumer.poll(timeout)
    finally:
        consumer.close()
    if msg is None or msg.error() is not None:
        found = "nothing" if msg is None else str(msg.error())
        raise BrokerError(f"reading topic={topic} partition={partition} offset={offset}: "
                          f"expected the message just produced, found {found}")
    if msg.value() != value or msg.offset() != offset:
        raise BrokerError(f"topic={topic} partition={partition}: expected offset={offset} "
                          f"value={value!r}, found offset={msg.offset()} value={msg.value()!r}")
