"""Offsets of a topic's partitions: log start, high watermark, last stable offset, lag.

One admin client answers every query, batched: a query for many partitions is one
``ListOffsets`` request per partition leader (``AdminClient.list_offsets``), and the earliest,
latest and read-committed latest queries of :meth:`TopicOffsets.read` are in flight together.

* ``log_start``: earliest retained offset (``OffsetSpec.earliest()``).
* ``hwm``: high watermark, the next offset to be written (``latest``, read uncommitted).
* ``last_stable``: the end of a read-committed read (``latest``, ``READ_COMMITTED``); below
  ``hwm`` while a transaction is open. Offsets are sparse either way: never count records as
  ``end - start``.

Errors: an unreachable broker or a failed query raises the caller's ``error`` class (the
error of its area: ``BrokerError`` for the cut, ``SourceError`` for the reconciler, ...); a
topic that does not exist raises ``ConfigError``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

from coordinator.core.errors import BrokerError, ConfigError, SeamlineError
from coordinator.core.values import Offset, PartitionId
from stream.kafka import client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionOffsets:
    """What the broker said about one partition (read by separate requests, not atomically)."""

    partition: PartitionId
    log_start: Offset
    hwm: Offset
    last_stable: Offset

    def __post_init__(self) -> None:
        if min(self.partition, self.log_start, self.hwm, self.last_stable) < 0:
            raise ValueError(f"partition={self.partition}: expected offsets >= 0, found {self}")


def lag_from(
    high: Mapping[PartitionId, Offset],
    positions: Mapping[PartitionId, Offset],
    fallback: Mapping[PartitionId, Offset],
) -> dict[int, int]:
    """``{partition: high - position}`` (never negative); a partition without a position
    counts from ``fallback``.

    >>> lag_from({PartitionId(0): Offset(10), PartitionId(1): Offset(5)},
    ...          {PartitionId(0): Offset(4)}, {PartitionId(0): Offset(0), PartitionId(1): Offset(7)})
    {0: 6, 1: 0}
    """
    return {
        int(p): max(0, hi - (positions[p] if p in positions else fallback[p]))
        for p, hi in sorted(high.items())
    }


class TopicOffsets:
    """Offset queries on one topic through one quiet admin client."""

    def __init__(
        self,
        conn: Mapping[str, Any],
        topic: str,
        *,
        timeout_s: float = 10.0,
        error: type[SeamlineError] = BrokerError,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"expected timeout_s > 0, found {timeout_s}")
        self.topic = topic
        self.timeout_s = timeout_s
        self._bootstrap = conn.get("bootstrap.servers")
        self._error = error
        self._admin = client.admin(conn)

    def partitions(self) -> list[PartitionId]:
        """The topic's partitions, sorted; ``ConfigError`` if the topic does not exist."""
        try:
            meta = self._admin.list_topics(self.topic, timeout=self.timeout_s)
        except KafkaException as exc:
            raise self._error(
                f"bootstrap={self._bootstrap}: broker unreachable within {self.timeout_s:g}s "
                f"({exc.args[0]})",
                hint="check stream.bootstrap and that the broker is running",
            ) from None
        tmeta = meta.topics.get(self.topic)
        code = tmeta.error.code() if tmeta is not None and tmeta.error is not None else None
        if tmeta is None or code == KafkaError.UNKNOWN_TOPIC_OR_PART or not tmeta.partitions:
            raise ConfigError(
                f"key=stream.topic: topic={self.topic} does not exist on "
                f"bootstrap={self._bootstrap}",
                hint="create the topic or fix stream.topic in the job file",
            )
        if code is not None:
            raise self._error(f"topic={self.topic}: metadata error {tmeta.error.str()}")
        return sorted(PartitionId(p) for p in tmeta.partitions)

    def _request(self, parts: Iterable[PartitionId], spec: Any, committed: bool) -> Any:
        level = IsolationLevel.READ_COMMITTED if committed else IsolationLevel.READ_UNCOMMITTED
        return self._admin.list_offsets(
            {TopicPartition(self.topic, int(p)): spec for p in parts},
            isolation_level=level,
            request_timeout=self.timeout_s,
        )

    def _collect(self, futures: Any, what: str) -> dict[PartitionId, Offset]:
        out: dict[PartitionId, Offset] = {}
        for tp, fut in sorted(futures.items(), key=lambda kv: kv[0].partition):
            try:
                out[PartitionId(tp.partition)] = Offset(max(0, int(fut.result().offset)))
            except KafkaException as exc:
                raise self._error(
                    f"topic={self.topic} partition={tp.partition}: {what} unavailable "
                    f"({exc.args[0]})",
                    hint="check the broker is reachable, then retry",
                ) from None
        return out

    def _query(
        self, parts: list[PartitionId], kinds: tuple[str, ...]
    ) -> list[dict[PartitionId, Offset]]:
        if not parts:
            return [{} for _ in kinds]
        specs = {
            "log_start": (OffsetSpec.earliest(), False),  # type: ignore[no-untyped-call]
            "hwm": (OffsetSpec.latest(), False),  # type: ignore[no-untyped-call]
            "last_stable": (OffsetSpec.latest(), True),  # type: ignore[no-untyped-call]
        }
        pending = [(kind, self._request(parts, *specs[kind])) for kind in kinds]
        return [self._collect(futures, kind) for kind, futures in pending]

    def log_starts(self, parts: list[PartitionId]) -> dict[PartitionId, Offset]:
        """Earliest retained offset per partition."""
        return self._query(parts, ("log_start",))[0]

    def high_watermarks(self, parts: list[PartitionId]) -> dict[PartitionId, Offset]:
        """High watermark (next offset to be written) per partition."""
        return self._query(parts, ("hwm",))[0]

    def last_stable(self, parts: list[PartitionId]) -> dict[PartitionId, Offset]:
        """Last stable offset (the end of a read-committed read) per partition."""
        return self._query(parts, ("last_stable",))[0]

    def watermarks(self, parts: list[PartitionId]) -> dict[PartitionId, tuple[Offset, Offset]]:
        """``(log_start, hwm)`` per partition (both queries in flight together)."""
        low, high = self._query(parts, ("log_start", "hwm"))
        return {p: (low[p], high[p]) for p in parts}

    def read(self, parts: list[PartitionId]) -> list[PartitionOffsets]:
        """Log start, high watermark and last stable offset of every partition in ``parts``."""
        low, high, stable = self._query(parts, ("log_start", "hwm", "last_stable"))
        return [PartitionOffsets(p, low[p], high[p], stable[p]) for p in sorted(parts)]

    def lag(
        self,
        positions: Mapping[PartitionId, Offset],
        start_offsets: Mapping[PartitionId, Offset] | None = None,
    ) -> dict[int, int]:
        """``{partition: hwm - position}`` over every partition of the topic; a partition
        without a position counts from ``start_offsets``, else from its log start."""
        parts = self.partitions()
        starts = start_offsets or {}
        if all(p in positions or p in starts for p in parts):
            high, fallback = self.high_watermarks(parts), {}
        else:
            fallback, high = self._query(parts, ("log_start", "hwm"))
        return lag_from(high, positions, {**fallback, **starts})
