"""Live lag per partition: the topic's high watermark minus the table's live offset."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from confluent_kafka import Consumer, TopicPartition

from coordinator.core.errors import LiveError
from coordinator.core.values import Offset, PartitionId
from stream.live.loop import LiveSink


def live_lag(
    kafka_conf: dict[str, str],
    topic: str,
    sink: LiveSink,
    start_offsets: Mapping[PartitionId, Offset] | None = None,
    timeout_s: float = 10.0,
) -> dict[int, int]:
    """``{partition: records not yet in the table}`` (offset positions; offsets are sparse).

    A partition the table holds no live offset for counts from ``start_offsets`` (the cut's
    hwm), else from the partition's log start.
    """
    table = sink.live_offsets()
    consumer = Consumer({**kafka_conf, "group.id": f"seamline-lag-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            raise LiveError(f"topic={topic}: cannot read metadata ({meta.error if meta else None})")
        out: dict[int, int] = {}
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            pid = PartitionId(p)
            base = table.get(pid, (start_offsets or {}).get(pid, Offset(low)))
            out[p] = max(0, high - base)
        return out
    finally:
        consumer.close()
