"""The cut: the seam between history and live, read from Kafka once per job and epoch.

For every partition the cut stores ``log_start`` (earliest retained offset) and ``hwm`` (the
high watermark: the next offset to be written). The live consumer starts at ``hwm``; the
backfill owns ``[log_start, hwm)``.

read_committed semantics: ``hwm`` is the *high* watermark, listed with ``read_uncommitted``
(a read_committed ``latest`` query answers the last stable offset instead). All partitions'
offsets are asked for in batched requests (:class:`stream.kafka.offsets.TopicOffsets`).
Records of a transaction that was open when the cut was taken sit below ``hwm``: they belong
to the backfill, which reads ``[log_start, hwm)`` with ``isolation.level=read_committed`` and
must wait until the partition's last stable offset (LSO) reaches ``hwm`` (the transaction
commits or aborts) before a slice ending at ``hwm`` is complete. Aborted records and
transaction markers take offsets but are never delivered: offsets are sparse, so
``hwm - log_start`` is only an upper bound on records. The live side, also read_committed,
sees the same transaction's records at offsets >= ``hwm`` only. The LSO at cut time is logged.

The event-time watermark is for information only (timestamps never define the seam): the
largest event time among the last few records below ``hwm``, decoded with
the job's decoder (:func:`stream.decode.decoder_for`). The records are read by
:func:`stream.kafka.tail.read_tails` (empty partitions skipped, consumers of at most 2.5 k
partitions fetching concurrently) while the LSO is asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Cut, Epoch, EventTimeMs, Offset, PartitionCut, PartitionId
from stream.decode import decoder_for
from stream.decode.base import RawMessage
from stream.decode.transform import identity
from stream.kafka.offsets import TopicOffsets
from stream.kafka.tail import read_tails

log = logging.getLogger(__name__)

_TAIL_RECORDS = 20
_TAIL_SECONDS = 2.0


@dataclass(frozen=True)
class CutReading:
    """What the broker said when the cut was read (before it gets an epoch)."""

    topic: str
    partitions: tuple[PartitionCut, ...]
    last_stable: Mapping[PartitionId, Offset]
    taken_at: datetime
    watermark_ms: EventTimeMs | None

    def to_cut(self, job_id: str, epoch: int) -> Cut:
        """The cut of ``job_id`` at ``epoch``."""
        return Cut(
            job_id=job_id,
            topic=self.topic,
            partitions=self.partitions,
            taken_at=self.taken_at,
            epoch=Epoch(epoch),
            watermark_ms=self.watermark_ms,
        )


def _offsets(job: JobSpec, timeout_s: float) -> TopicOffsets:
    return TopicOffsets(job.kafka_config(), job.stream.topic, timeout_s=timeout_s)


def topic_partitions(job: JobSpec, timeout_s: float = 10.0) -> list[PartitionId]:
    """The topic's partitions; ``ConfigError`` if it does not exist, ``BrokerError`` if the
    broker cannot be reached within ``timeout_s``."""
    return _offsets(job, timeout_s).partitions()


def read_log_starts(job: JobSpec, timeout_s: float = 10.0) -> dict[PartitionId, Offset]:
    """The current earliest retained offset per partition (for retention-loss checks)."""
    offsets = _offsets(job, timeout_s)
    return offsets.log_starts(offsets.partitions())


def read_cut(job: JobSpec, timeout_s: float = 10.0, *, watermark: bool = True) -> CutReading:
    """Read ``log_start``/``hwm`` per partition (and the LSO and event-time watermark)."""
    topic = job.stream.topic
    t0 = time.perf_counter()
    offsets = _offsets(job, timeout_s)
    parts = offsets.partitions()
    taken_at = datetime.now(UTC)
    t1 = time.perf_counter()
    # the LSO is asked while the watermark's tails are read (they need log start and hwm only)
    with ThreadPoolExecutor(1, thread_name_prefix="cut-lso") as pool:
        asked = pool.submit(offsets.last_stable, parts)
        marks = offsets.watermarks(parts)
        cuts = tuple(PartitionCut(p, *marks[p]) for p in sorted(parts))
        t2 = time.perf_counter()
        mark = _event_time_watermark(job, cuts) if watermark else None
        t3 = time.perf_counter()
        stable = asked.result()
    log.debug("topic=%s partitions=%d: cut read in %.3fs (metadata %.3fs, log start and hwm "
              "%.3fs, watermark %.3fs, lso waited %.3fs)", topic, len(parts),
              time.perf_counter() - t0, t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)  # fmt: skip
    for pc_ in cuts:
        if stable[pc_.partition] < pc_.hwm:
            log.info(
                "topic=%s partition=%d: open transactions, lso=%d < hwm=%d; the backfill "
                "waits for the lso to reach hwm",
                topic,
                pc_.partition,
                stable[pc_.partition],
                pc_.hwm,
            )
    return CutReading(topic, cuts, stable, taken_at, mark)


def floor_at_live(reading: CutReading, live: Mapping[PartitionId, Offset]) -> CutReading:
    """``reading`` with every partition's ``hwm`` raised to the table's live offset.

    A new cut never puts ``hwm`` below offsets the table already holds from live (DESIGN §1):
    the backfill would own records the live side already wrote (overlap), and a live
    consumer restarting at the table's offset would write them a second time. The broker's
    high watermark is normally at or above the table's live offset; it is not when a live
    batch committed records newer than the watermark that was read.
    """
    parts = []
    for c in reading.partitions:
        floor = live.get(c.partition)
        if floor is not None and floor > c.hwm:
            log.info(
                "topic=%s partition=%d: hwm raised from %d to the table's live offset %d",
                reading.topic, c.partition, c.hwm, floor,
            )  # fmt: skip
            c = PartitionCut(c.partition, c.log_start, floor)
        parts.append(c)
    return replace(reading, partitions=tuple(parts))


def _event_time_watermark(job: JobSpec, cuts: tuple[PartitionCut, ...]) -> EventTimeMs | None:
    """Largest event time among the last few records below ``hwm`` (best effort: what
    arrives within ``_TAIL_SECONDS``; empty partitions are not read)."""
    ranges = {c.partition: (Offset(max(c.log_start, c.hwm - _TAIL_RECORDS)), c.hwm) for c in cuts}
    tails = read_tails(job.kafka_config(), job.stream.topic, ranges, seconds=_TAIL_SECONDS,
                       purpose="cut")  # fmt: skip
    if tails.unfinished:
        log.info(
            "topic=%s: the event-time watermark leaves out %d partition(s) not read within "
            "%gs (e.g. partition=%d)", job.stream.topic, len(tails.unfinished), _TAIL_SECONDS,
            min(tails.unfinished),
        )  # fmt: skip
    return _max_event_time(job, tails.records)


def _max_event_time(job: JobSpec, msgs: list[RawMessage]) -> EventTimeMs | None:
    if not msgs:
        return None
    decoder = decoder_for(job.stream.format, job)
    table, _bad = decoder.decode(msgs, job.schema_.arrow_schema(), identity, side="backfill")
    column = table.column(job.schema_.event_time)
    if table.num_rows == 0 or column.null_count == table.num_rows:
        return None
    if pa.types.is_date(column.type):
        column = column.cast(pa.timestamp("ms"))
    if pa.types.is_timestamp(column.type) and column.type.unit == "us":
        # sub-millisecond instants: the max in microseconds, floored to its millisecond
        top = pc.max(column.cast(pa.int64())).as_py()
        return None if top is None else EventTimeMs(int(top) // 1000)
    value = pc.max(column.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())).as_py()
    return None if value is None else EventTimeMs(int(value))
