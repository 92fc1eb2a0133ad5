"""Live lag per partition: the topic's high watermark minus the table's live offset."""

from __future__ import annotations

from collections.abc import Mapping

from coordinator.core.errors import LiveError
from coordinator.core.values import Offset, PartitionId
from stream.kafka.offsets import TopicOffsets
from stream.live.loop import LiveSink


def live_lag(
    kafka_conf: Mapping[str, str],
    topic: str,
    sink: LiveSink,
    start_offsets: Mapping[PartitionId, Offset] | None = None,
    timeout_s: float = 10.0,
) -> dict[int, int]:
    """``{partition: records not yet in the table}`` (offset positions; offsets are sparse).

    A partition the table holds no live offset for counts from ``start_offsets`` (the cut's
    hwm), else from the partition's log start. The watermarks of all partitions are asked
    for in one batched request.
    """
    table = sink.live_offsets()
    offsets = TopicOffsets(kafka_conf, topic, timeout_s=timeout_s, error=LiveError)
    return offsets.lag(table, start_offsets)
