"""Thin Kafka adapter of the reconciler: committed ends and decoded source units.

All reading goes through :func:`stream.kafka.reader.iter_kafka_range` (bounded, read
committed, stops exactly at a range's end despite sparse offsets) and
the job's decoder (:func:`stream.decode.decoder_for`) with the job's transform, so the
source side yields exactly the rows the writers would write, plus the offsets the decoder quarantines.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from coordinator.core.errors import SourceError
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import OffsetRange, PartitionId
from reconcile.coverage import I64
from stream.decode import decoder_for
from stream.decode.transform import Transform, load_transform
from stream.kafka.offsets import TopicOffsets
from stream.kafka.quarantine import default_topic, read_quarantine
from stream.kafka.reader import iter_kafka_range

log = logging.getLogger(__name__)

_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class SourceUnit:
    """The decoded rows of some offset ranges plus what coverage needs about them."""

    rows: pa.Table | None  # None: no record decoded into a row
    offsets: I64  # offsets holding committed records (sparse, sorted per range)
    timestamps_ms: I64  # Kafka record timestamps, aligned with ``offsets`` (-1: none)
    quarantined: I64  # offsets the decoder refused


def committed_ends(
    kafka_conf: Mapping[str, Any], topic: str, partitions: Sequence[int]
) -> dict[int, int]:
    """The last stable offset (read-committed end) of each partition, now (one batched
    request; ``SourceError`` when the broker cannot answer)."""
    offsets = TopicOffsets(kafka_conf, topic, timeout_s=_TIMEOUT_S, error=SourceError)
    ends = offsets.last_stable([PartitionId(p) for p in partitions])
    return {int(p): int(o) for p, o in ends.items()}


class KafkaUnits:
    """Reads offset ranges of the job's topic into :class:`SourceUnit` values."""

    def __init__(self, job: JobSpec, *, timeout_s: float = 30.0) -> None:
        self.conf = job.kafka_config()
        self.topic = job.stream.topic
        self.schema = job.schema_.arrow_schema()
        self.transform: Transform = load_transform(job.transform.function)
        self.decoder = decoder_for(job.stream.format, job)
        self.timeout_s = timeout_s

    def ends(self, partitions: Sequence[int]) -> dict[int, int]:
        """Read-committed end offsets now."""
        return committed_ends(self.conf, self.topic, partitions)

    def read(self, ranges: Sequence[OffsetRange]) -> SourceUnit:
        """Decode every committed record of ``ranges``."""
        tables: list[pa.Table] = []
        offsets: list[int] = []
        stamps: list[int] = []
        bad: list[int] = []
        for rng in ranges:
            for msgs in iter_kafka_range(self.conf, self.topic, rng, timeout_s=self.timeout_s):
                offsets.extend(m.offset for m in msgs)
                stamps.extend(-1 if m.timestamp_ms is None else m.timestamp_ms for m in msgs)
                rows, quarantined = self.decoder.decode(msgs, self.schema, self.transform, "backfill")
                bad.extend(q.offset for q in quarantined)
                if rows.num_rows:
                    tables.append(rows)
        return SourceUnit(
            pa.concat_tables(tables) if tables else None,
            np.asarray(offsets, dtype=np.int64),
            np.asarray(stamps, dtype=np.int64),
            np.asarray(bad, dtype=np.int64),
        )


def dead_letter_topic(job: JobSpec) -> str:
    """The job's dead-letter topic: ``live.quarantine_topic`` or ``<topic>.seamline-dlq``."""
    return job.live.quarantine_topic or default_topic(job.stream.topic)


def read_dead_letters(job: JobSpec, *, timeout_s: float = 30.0) -> dict[int, set[int]]:
    """Partition -> offsets of the job's topic held in its dead-letter topic (none if absent).

    Both the live consumer and the backfill executor confirm quarantined records there before
    committing the batch that skipped them. Raises ``LiveError`` when the topic cannot be read.
    """
    topic = dead_letter_topic(job)
    out: dict[int, set[int]] = {}
    for p, o in read_quarantine(job.kafka_config(), topic, timeout_s=timeout_s):
        out.setdefault(p, set()).add(o)
    log.info("dead letters topic=%s records=%d", topic, sum(len(v) for v in out.values()))
    return out
