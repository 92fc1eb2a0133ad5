"""An in-memory Kafka topic: offsets (log start, high-water mark, a cut, retention) and, for
the reconciler, committed ends and decoded source units.

Implements ``reconcile.run.UnitSource`` (``ends``, ``read``) over a log of
:class:`~stream.decode.base.RawMessage` values with *sparse* offsets (a transaction
marker or an aborted record takes an offset but holds no record, so tests can leave holes).
Reading decodes with the real :func:`~stream.decode.json.decode_batch`, exactly like
``reconcile.source.KafkaUnits``: the same record yields the same row, and a record the
decoder refuses is reported as quarantined.

>>> import pyarrow as pa
>>> topic = FakeTopic(pa.schema([pa.field("id", pa.int64())]))
>>> topic.produce(0, {"id": 1}); topic.skip(0); topic.produce(0, {"id": 2})
0
2
>>> topic.ends([0, 1])
{0: 3, 1: 0}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from coordinator.core.values import Cut, Epoch, Offset, OffsetRange, PartitionCut, PartitionId
from reconcile.source import SourceUnit
from stream.decode.base import RawMessage
from stream.decode.json import decode_batch
from stream.decode.transform import Transform, identity


class FakeTopic:
    """Partitions of committed records; offsets grow by one per record or skipped offset."""

    def __init__(
        self, schema: pa.Schema, transform: Transform = identity, name: str = "orders"
    ) -> None:
        self.name = name
        self.schema = schema
        self.transform = transform
        self.log: dict[int, list[RawMessage]] = {}
        self._next: dict[int, int] = {}
        self._start: dict[int, int] = {}
        self.reads: list[tuple[OffsetRange, ...]] = []

    def produce(self, partition: int, doc: Mapping[str, Any] | bytes, timestamp_ms: int = 0) -> int:
        """Append one committed record; returns its offset."""
        offset = self._next.get(partition, 0)
        value = doc if isinstance(doc, bytes) else json.dumps(dict(doc)).encode()
        msg = RawMessage(partition, offset, value, timestamp_ms=timestamp_ms)
        self.log.setdefault(partition, []).append(msg)
        self._next[partition] = offset + 1
        return offset

    def skip(self, partition: int, count: int = 1) -> None:
        """Take ``count`` offsets that hold no record (transaction markers, aborted records)."""
        if count < 0:
            raise ValueError(f"partition={partition}: expected count >= 0, found {count}")
        self._next[partition] = self._next.get(partition, 0) + count

    def delete_before(self, partition: int, offset: int) -> None:
        """Retention: records below ``offset`` are gone and ``log_start`` moves up to it."""
        if offset > self._next.get(partition, 0):
            raise ValueError(
                f"partition={partition}: expected offset <= {self._next.get(partition, 0)}, "
                f"found {offset}"
            )
        self._start[partition] = max(self._start.get(partition, 0), offset)
        self.log[partition] = [m for m in self.log.get(partition, []) if m.offset >= offset]

    def watermarks(self, partitions: Sequence[int]) -> dict[int, tuple[int, int]]:
        """``(log_start, hwm)`` of each partition: earliest retained and next offset."""
        return {p: (self._start.get(p, 0), self._next.get(p, 0)) for p in partitions}

    def take_cut(self, job_id: str, partitions: Sequence[int], epoch: int = 1) -> Cut:
        """The cut of ``partitions`` now: the backfill owns ``[log_start, hwm)``."""
        parts = tuple(
            PartitionCut(PartitionId(p), Offset(lo), Offset(hi))
            for p, (lo, hi) in sorted(self.watermarks(partitions).items())
        )
        return Cut(job_id, self.name, parts, datetime.now(UTC), Epoch(epoch))

    def offsets(self, partition: int) -> list[int]:
        """Offsets that hold a committed record."""
        return [m.offset for m in self.log.get(partition, [])]

    def ends(self, partitions: Sequence[int]) -> dict[int, int]:
        """The read-committed end (next offset) of each partition."""
        return {p: self._next.get(p, 0) for p in partitions}

    def read(self, ranges: Sequence[OffsetRange]) -> SourceUnit:
        """Decode every committed record of ``ranges``."""
        self.reads.append(tuple(ranges))
        msgs = [
            m for r in ranges for m in self.log.get(r.partition, []) if r.start <= m.offset < r.end
        ]
        rows, bad = decode_batch(msgs, self.schema, self.transform, "backfill")
        return SourceUnit(
            rows if rows.num_rows else None,
            np.asarray([m.offset for m in msgs], dtype=np.int64),
            np.asarray([m.timestamp_ms or 0 for m in msgs], dtype=np.int64),
            np.asarray([q.offset for q in bad], dtype=np.int64),
        )

    def messages(self, rng: OffsetRange) -> list[RawMessage]:
        """The committed records of one range, in offset order."""
        return [m for m in self.log.get(rng.partition, []) if rng.start <= m.offset < rng.end]
