"""Offsets of a topic's partitions: log start, high watermark, last stable offset, lag.

An admin client reads the topic's partitions; offsets are asked batched: a query for many
partitions is one ``ListOffsets`` request per partition leader, through a short-lived
consumer's ``offsets_for_times`` with the protocol's timestamps -2 (earliest) and -1 (latest)
under the consumer's isolation level (``AdminClient.list_offsets`` builds one Python future
per partition: most of a 10 k-partition cut's time). Requests carry at most
:data:`CHUNK` partitions: librdkafka matches a ``ListOffsets`` answer to the asked partitions
in time quadratic in their number (one request for 10 k partitions cost ~0.45 s of client CPU
and ~1.5 s wall on 2 loaded cores; ten of 1 k, 0.08 s and 0.35 s), and the kinds asked together
(log start, high watermark, last stable offset) and their chunks are asked concurrently.

A partition whose leader does not serve yet (``NOT_LEADER_OR_FOLLOWER``,
``LEADER_NOT_AVAILABLE``, ``OFFSET_NOT_AVAILABLE``, ``UNKNOWN_TOPIC_OR_PARTITION``,
``UNKNOWN_LEADER_EPOCH``, ``FENCED_LEADER_EPOCH``: right after the topic was created or
partitions were added, or during a leader election) is asked again with backoff for up to
the query's timeout, then reported with what to do.

* ``log_start``: earliest retained offset (timestamp -2).
* ``hwm``: high watermark, the next offset to be written (-1, read uncommitted).
* ``last_stable``: the end of a read-committed read (-1, read committed); below
  ``hwm`` while a transaction is open. Offsets are sparse either way: never count records as
  ``end - start``.

Errors: an unreachable broker or a failed query raises the caller's ``error`` class (the
error of its area: ``BrokerError`` for the cut, ``SourceError`` for the reconciler, ...); a
topic that does not exist raises ``ConfigError``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from coordinator.core.errors import BrokerError, ConfigError, SeamlineError
from coordinator.core.values import Offset, PartitionId
from stream.kafka import client

log = logging.getLogger(__name__)

#: Partitions per ``ListOffsets`` request (see the module docstring).
CHUNK = 1000

#: Requests in flight at once.
_THREADS = 8

#: How long an unknown topic is asked again before it is a configuration error, seconds.
_UNKNOWN_TOPIC_S = 2.0

#: Answers meaning "no leader serves this partition yet": asked again until the timeout.
_LEADERLESS = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.OFFSET_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.FENCED_LEADER_EPOCH,
})  # fmt: skip


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
        self._conn = dict(conn)
        self._error = error
        self._admin = client.admin(conn)

    def partitions(self) -> list[PartitionId]:
        """The topic's partitions, sorted; ``ConfigError`` if the topic does not exist.

        A topic without leaders yet (``LEADER_NOT_AVAILABLE`` right after its creation) is
        asked again with backoff for up to the timeout; an unknown topic for up to
        :data:`_UNKNOWN_TOPIC_S` (the broker's metadata may lag a creation a moment ago)."""
        start = time.monotonic()
        deadline = start + self.timeout_s
        delay = 0.05
        while True:
            try:
                meta = self._admin.list_topics(self.topic, timeout=self.timeout_s)
            except KafkaException as exc:
                raise self._error(
                    f"bootstrap={self._bootstrap}: broker unreachable within "
                    f"{self.timeout_s:g}s ({exc.args[0]})",
                    hint="check stream.bootstrap and that the broker is running",
                ) from None
            tmeta = meta.topics.get(self.topic)
            code = tmeta.error.code() if tmeta is not None and tmeta.error is not None else None
            if (
                tmeta is not None
                and code in _LEADERLESS
                and code != KafkaError.UNKNOWN_TOPIC_OR_PART
            ):
                if time.monotonic() + delay > deadline:
                    raise self._error(
                        f"topic={self.topic}: no leader serves the topic yet "
                        f"({tmeta.error.str()}), still after {self.timeout_s:g}s",
                        hint="a topic just created or a leader election: retry in a moment; if "
                        "it persists, check the broker log",
                    )
            elif code == KafkaError.UNKNOWN_TOPIC_OR_PART or tmeta is None or not tmeta.partitions:
                # a topic created a moment ago may be unknown to the broker's metadata for a
                # moment: asked again for a short while only (a wrong name fails fast)
                if time.monotonic() + delay > min(deadline, start + _UNKNOWN_TOPIC_S):
                    break
            else:
                break
            time.sleep(delay)
            delay = min(1.0, delay * 2)
        if tmeta is None or code == KafkaError.UNKNOWN_TOPIC_OR_PART or not tmeta.partitions:
            raise ConfigError(
                f"key=stream.topic: topic={self.topic} does not exist on "
                f"bootstrap={self._bootstrap}",
                hint="create the topic or fix stream.topic in the job file",
            )
        if code is not None:
            raise self._error(f"topic={self.topic}: metadata error {tmeta.error.str()}")
        return sorted(PartitionId(p) for p in tmeta.partitions)

    def _ask(
        self, consumer: Any, parts: list[PartitionId], what: str, pool: Executor | None = None
    ) -> dict[PartitionId, Offset]:
        """Batched ``ListOffsets`` (per partition leader) through ``offsets_for_times``, at most
        :data:`CHUNK` partitions a request (in flight together on ``pool``): the protocol's
        timestamps -2 (earliest) and -1 (latest) under the consumer's isolation level. Unlike
        ``AdminClient.list_offsets`` it builds no Python future per partition (at 10 k
        partitions those futures were most of the cut's time)."""
        stamp = -2 if what == "log_start" else -1
        chunks = [parts[i : i + CHUNK] for i in range(0, len(parts), CHUNK)]
        out: dict[PartitionId, Offset] = {}
        if pool is None or len(chunks) == 1:
            for chunk in chunks:
                out.update(self._ask_chunk(consumer, chunk, what, stamp))
        else:
            futures = [pool.submit(self._ask_chunk, consumer, c, what, stamp) for c in chunks]
            for f in futures:
                out.update(f.result())
        missing = [p for p in parts if p not in out]
        if missing:
            raise self._unavailable(missing[0], what, "no answer")
        return out

    def _ask_chunk(
        self, consumer: Any, chunk: list[PartitionId], what: str, stamp: int
    ) -> dict[PartitionId, Offset]:
        """One request; a leaderless answer is asked again with backoff until the timeout."""
        deadline = time.monotonic() + self.timeout_s
        delay = 0.05
        while True:
            asked = [TopicPartition(self.topic, int(p), stamp) for p in chunk]
            try:
                answers = consumer.offsets_for_times(asked, timeout=self.timeout_s)
            except KafkaException as exc:
                failed, why = chunk[0], exc.args[0]
            else:
                bad = next((tp for tp in answers if tp.error is not None or tp.offset < 0), None)
                if bad is None:
                    return {PartitionId(tp.partition): Offset(int(tp.offset)) for tp in answers}
                failed, why = PartitionId(bad.partition), bad.error or bad.offset
            if not isinstance(why, KafkaError) or why.code() not in _LEADERLESS:
                raise self._unavailable(failed, what, why)
            if time.monotonic() + delay > deadline:
                raise self._error(
                    f"topic={self.topic} partition={failed}: {what} unavailable: no leader "
                    f"serves the partition yet ({why.str()}), still after {self.timeout_s:g}s",
                    hint="a topic just created or a leader election: retry in a moment; if it "
                    "persists, check the broker log",
                )
            log.debug("topic=%s partition=%d: %s, asking again in %.2fs",
                      self.topic, failed, why.str(), delay)  # fmt: skip
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    def _unavailable(self, partition: int, what: str, why: object) -> SeamlineError:
        return self._error(
            f"topic={self.topic} partition={partition}: {what} unavailable ({why})",
            hint="check the broker is reachable, then retry",
        )

    def _query(
        self, parts: list[PartitionId], kinds: tuple[str, ...]
    ) -> list[dict[PartitionId, Offset]]:
        if not parts:
            return [{} for _ in kinds]
        levels = {"log_start": "read_uncommitted", "hwm": "read_uncommitted",
                  "last_stable": "read_committed"}  # fmt: skip
        consumers: dict[str, Any] = {}
        try:
            for kind in kinds:
                level = levels[kind]
                if level not in consumers:
                    consumers[level] = client.consumer(
                        self._conn, purpose="offsets", extras={"isolation.level": level}
                    )
            if len(parts) <= CHUNK:
                return [self._ask(consumers[levels[kind]], parts, kind) for kind in kinds]
            # many partitions: the requests of every chunk and kind are in flight together (a
            # request mostly waits on the broker; librdkafka clients are thread-safe)
            with (
                ThreadPoolExecutor(len(kinds), thread_name_prefix="offsets-kind") as per_kind,
                ThreadPoolExecutor(_THREADS, thread_name_prefix="offsets") as pool,
            ):
                futures = [per_kind.submit(self._ask, consumers[levels[k]], parts, k, pool)
                           for k in kinds]  # fmt: skip
                return [f.result() for f in futures]
        finally:
            for c in consumers.values():
                c.close()

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
        """``(log_start, hwm)`` per partition (one consumer asks both)."""
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
