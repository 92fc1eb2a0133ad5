"""Dead-letter topic for malformed live records (DESIGN §7).

A quarantined record is produced with its raw bytes and headers ``seamline.partition``,
``seamline.offset``, ``seamline.error`` and ``seamline.topic``, and delivery is confirmed
BEFORE the batch that skipped it is committed to the table: a crash can then only repeat a
quarantine entry, never lose one. Readers de-duplicate by ``(partition, offset)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from coordinator.core.errors import LiveError
from coordinator.core.retry import transient
from stream.decode.base import Quarantined
from stream.kafka import client

log = logging.getLogger(__name__)

H_PARTITION = "seamline.partition"
H_OFFSET = "seamline.offset"
H_ERROR = "seamline.error"
H_TOPIC = "seamline.topic"

_ERROR_MAX = 1000


def default_topic(topic: str) -> str:
    """The dead-letter topic used when the job names none."""
    return f"{topic}.seamline-dlq"


def ensure_topic(kafka_conf: dict[str, str], topic: str, timeout_s: float = 15.0) -> None:
    """Create ``topic`` (1 partition) if it does not exist yet."""
    admin = client.admin(kafka_conf)
    if topic in admin.list_topics(timeout=timeout_s).topics:
        return
    fut = admin.create_topics([NewTopic(topic, num_partitions=1)])[topic]
    try:
        fut.result(timeout=timeout_s)
    except Exception as exc:
        err = exc.args[0] if exc.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise LiveError(
                f"topic={topic}: cannot create the quarantine topic ({exc})",
                hint="create it by hand or set live.quarantine_topic to an existing topic",
            ) from exc


class QuarantineWriter:
    """Produces quarantined records to the dead-letter topic and confirms delivery."""

    def __init__(self, kafka_conf: dict[str, str], dlq_topic: str, source_topic: str) -> None:
        self.topic = dlq_topic
        self._source = source_topic
        self._producer = client.producer(
            kafka_conf, extras={"enable.idempotence": True, "acks": "all", "linger.ms": 5}
        )
        self._failures: list[str] = []

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failures.append(str(err))

    def write(self, records: Sequence[Quarantined], timeout_s: float = 30.0) -> None:
        """Produce ``records`` and wait until every one is acknowledged.

        Raises ``LiveError`` when any delivery failed: the caller must not commit the batch.
        """
        if not records:
            return
        self._failures.clear()
        for q in records:
            headers: list[tuple[str, str | bytes | None]] = [
                (H_TOPIC, self._source.encode()),
                (H_PARTITION, str(q.partition).encode()),
                (H_OFFSET, str(q.offset).encode()),
                (H_ERROR, q.error[:_ERROR_MAX].encode()),
            ]
            key = f"{q.partition}:{q.offset}".encode()
            self._producer.produce(
                self.topic, value=q.raw, key=key, headers=headers, on_delivery=self._on_delivery
            )
            self._producer.poll(0)
        remaining = self._producer.flush(timeout_s)
        if remaining or self._failures:
            raise transient(
                LiveError(
                    f"topic={self.topic}: expected {len(records)} quarantine deliveries, "
                    f"found {remaining} undelivered and errors {self._failures[:3]}",
                    hint="check the broker; the batch was not committed and will be re-read",
                )
            )
        log.info("quarantined %d records to topic=%s", len(records), self.topic)


def _header(headers: list[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or []:
        if key == name:
            return value.decode() if value is not None else None
    return None


def read_quarantine(
    kafka_conf: dict[str, str], topic: str, timeout_s: float = 30.0
) -> set[tuple[int, int]]:
    """Every ``(partition, offset)`` of the source topic held in the dead-letter ``topic``."""
    consumer = client.consumer(
        kafka_conf, group="seamline-quarantine-reader", extras={"auto.offset.reset": "earliest"}
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return set()
        out: set[tuple[int, int]] = set()
        for p in meta.partitions:
            out |= _read_partition(consumer, topic, p, timeout_s)
        return out
    finally:
        consumer.close()


def _read_partition(
    consumer: Any, topic: str, partition: int, timeout_s: float
) -> set[tuple[int, int]]:
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
    out: set[tuple[int, int]] = set()
    if high <= low:
        return out
    consumer.assign([TopicPartition(topic, partition, low)])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            pos = consumer.position([TopicPartition(topic, partition)])[0].offset
            if pos >= high:
                break
            continue
        if msg.error():
            continue
        p, o = _header(msg.headers(), H_PARTITION), _header(msg.headers(), H_OFFSET)
        if p is not None and o is not None:
            out.add((int(p), int(o)))
        if msg.offset() + 1 >= high:
            break
    else:
        raise LiveError(
            f"topic={topic} partition={partition}: expected to read up to offset {high}, timed out",
            hint="check the broker and retry",
        )
    consumer.unassign()
    return out
