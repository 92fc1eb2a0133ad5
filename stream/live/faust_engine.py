"""The live side as a Faust app (faust-streaming), with the same exactly-once guarantees.

The table is the source of truth. Faust seeks to the consumer group's committed offsets and
ignores ``seek()`` in rebalance callbacks, so before the worker starts we commit, for the group,
the offsets the table says come next (else the cut's ``hwm``) and read them back. The agent then
takes batches of events, drops anything below the table's position, decodes with the shared
kernel, quarantines malformed records first and appends with an offset-conditional commit,
all through the confluent loop's :class:`~stream.live.writer.BatchWriter` (one retry policy;
a conflict re-reads the table's offsets; "outcome unknown" looks the token up).
Faust's own offset commits are monitoring only. Reads are ``read_committed``: the app runs
with ``processing_guarantee="exactly_once"``, the only mode in which Faust asks for it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import faust
from confluent_kafka import KafkaException, TopicPartition

from coordinator.core.errors import LiveError
from coordinator.core.logs import configure_worker_logging
from coordinator.core.values import Offset, PartitionId
from stream.decode.kafka_meta import kafka_fields, with_metadata
from stream.decode.tombstones import carries_null_values
from stream.decode.transform import Transform
from stream.kafka import client
from stream.live.core import Batch, LiveBook, below_cut, start_positions
from stream.live.loop import LiveProgress, LiveSettings, LiveSink, QuarantineSink
from stream.live.writer import BatchOutcome, BatchWriter

log = logging.getLogger(__name__)


def commit_group_offsets(
    kafka_conf: Mapping[str, str],
    group: str,
    topic: str,
    offsets: Mapping[PartitionId, Offset],
    timeout_s: float = 60.0,
) -> None:
    """Commit ``offsets`` for ``group`` and read them back (retries while a dead member of
    the group has not yet timed out). Raises ``LiveError`` when that does not succeed."""
    consumer = client.consumer(kafka_conf, group=group)
    tps = [TopicPartition(topic, p, o) for p, o in sorted(offsets.items())]
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                consumer.commit(offsets=tps, asynchronous=False)
                got = consumer.committed([TopicPartition(topic, p) for p in sorted(offsets)], 10)
                if {tp.partition: tp.offset for tp in got} == dict(offsets):
                    return
                err = f"read back {[(tp.partition, tp.offset) for tp in got]}"
            except KafkaException as exc:
                err = str(exc)
            if time.monotonic() > deadline:
                raise LiveError(
                    f"group={group} topic={topic}: expected to commit the table's offsets "
                    f"{dict(offsets)}, found error {err}",
                    hint="stop other members of the group and retry",
                )
            log.info("group offsets not committed yet (%s), retrying", err)
            time.sleep(1.0)
    finally:
        consumer.close()


class FaustBatchWriter:
    """Writes batches of Faust events to the table exactly once (blocking; run in a thread).

    Commits go through the same :class:`~stream.live.writer.BatchWriter` as the confluent
    loop: one retry policy, conflicts re-read the table's offsets, an unknown outcome looks
    the token up. Faust cannot seek, so a partition the table moved past is re-buffered from
    the events in hand (everything below the table's offset is dropped by the book).
    """

    def __init__(
        self,
        settings: LiveSettings,
        sink: LiveSink,
        transform: Transform,
        start_offsets: Mapping[PartitionId, Offset],
        quarantine: QuarantineSink,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._sink = sink
        self._fallback = dict(start_offsets)
        self._writer = BatchWriter(
            settings.job_id,
            settings.epoch,
            settings.schema,
            transform,
            sink,
            quarantine,
            self._fallback,
            settings.max_commit_attempts,
            sleep,
            settings.decoder,
        )
        self._book = LiveBook()
        self._book.assign(start_positions(self._fallback, sink.live_offsets(), self._fallback))
        self.progress = LiveProgress()

    def write(self, events: list[tuple[int, int, bytes | None]]) -> None:
        """Buffer ``(partition, offset, value)`` events and commit them as one batch."""
        by_partition: dict[int, tuple[list[int], list[bytes | None]]] = {}
        for p, o, v in events:
            entry = by_partition.setdefault(p, ([], []))
            entry[0].append(o)
            entry[1].append(v)
        self._rebuffer(by_partition, by_partition)
        for _round in range(self.settings.max_commit_attempts):
            if not self._book.ranges():
                return
            outcome = self._commit(self._book.take(time.monotonic()))
            if not outcome.reseek:
                return
            log.warning("table moved for %s: dropping what it holds", dict(outcome.reseek))
            self._rebuffer(by_partition, outcome.reseek)
        raise LiveError(f"job={self.settings.job_id}: live commit kept finding the table moved")

    def _commit(self, batch: Batch) -> BatchOutcome:
        try:
            outcome = self._writer.write(batch)
        except BaseException:  # nothing known committed: the book holds the batch again
            self._book.settle((), {})
            for p, offsets, values in batch.records:
                self._book.add_many(p, offsets, values, time.monotonic())
            raise
        committed = outcome.record.token.ranges if outcome.record is not None else ()
        self._book.settle(committed, outcome.reseek, time.monotonic())
        if outcome.record is not None:
            self._count(outcome)
        return outcome

    def _rebuffer(
        self,
        by_partition: Mapping[int, tuple[list[int], list[bytes | None]]],
        partitions: Iterable[int],
    ) -> None:
        for p in partitions:
            offsets, values = by_partition.get(int(p), ([], []))
            self._book.add_many(int(p), offsets, values, time.monotonic())

    def _count(self, outcome: BatchOutcome) -> None:
        assert outcome.record is not None
        self.progress.records += outcome.rows
        self.progress.quarantined += len(outcome.quarantined)
        self.progress.commits += 1
        for r in outcome.record.token.ranges:
            self.progress.committed[r.partition] = r.end


def _ssl_context(kafka_conf: Mapping[str, str]) -> ssl.SSLContext:
    """A server-verifying TLS context trusting ``ssl.ca.location`` (else the system CAs)."""
    return ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=kafka_conf.get("ssl.ca.location") or None
    )


def broker_credentials(kafka_conf: Mapping[str, str]) -> faust.auth.Credentials | None:
    """Faust credentials for the librdkafka security settings of ``kafka_conf``.

    ``security.protocol`` PLAINTEXT gives ``None``; SSL an ``SSLCredentials``; SASL_PLAINTEXT
    and SASL_SSL a ``SASLCredentials`` (with a TLS context for SASL_SSL).
    """
    protocol = kafka_conf.get("security.protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(kafka_conf))
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        return faust.SASLCredentials(
            username=kafka_conf.get("sasl.username"),
            password=kafka_conf.get("sasl.password"),
            mechanism=kafka_conf.get("sasl.mechanism") or "PLAIN",
            ssl_context=_ssl_context(kafka_conf) if protocol == "SASL_SSL" else None,
        )
    raise LiveError(
        f"key=stream.security.protocol: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, "
        f"found {protocol}",
        hint="fix [stream.security] in the job file",
    )


def broker_settings(kafka_conf: Mapping[str, str]) -> dict[str, Any]:
    """The Faust app's ``broker`` (one ``kafka://`` URL per bootstrap server) and
    ``broker_credentials`` from the job's connection settings."""
    servers = [s.strip() for s in kafka_conf["bootstrap.servers"].split(",") if s.strip()]
    return {
        "broker": [f"kafka://{s}" for s in servers],
        "broker_credentials": broker_credentials(kafka_conf),
    }


def build_app(
    settings: LiveSettings, kafka_conf: Mapping[str, str], writer: FaustBatchWriter
) -> faust.App:
    """A Faust app whose one agent feeds ``writer`` in batches."""
    app = faust.App(
        settings.group,
        **broker_settings(kafka_conf),
        web_enabled=False,
        processing_guarantee="exactly_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        broker_rebalance_timeout=20.0,
        topic_allow_declare=False,
        topic_disable_leader=True,
        store="memory://",
    )
    topic = app.topic(settings.topic, value_serializer="raw", key_serializer="raw")
    limits = settings.limits
    meta = bool(kafka_fields(settings.schema))
    nulls = carries_null_values(settings.decoder)  # null values keep their key (tombstones)

    @app.agent(topic)
    async def live_agent(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(limits.max_records, within=limits.max_seconds):
            batch = [(e.message.partition, e.message.offset, _value(e.message, meta, nulls))
                     for e in events]  # fmt: skip
            await loop.run_in_executor(None, writer.write, batch)

    return app


def _value(message: Any, meta: bool, nulls: bool = False) -> bytes | None:
    """The message value, carrying its key, headers and timestamp when the job has
    ``[schema.kafka]`` columns (Faust's timestamp is in seconds); with ``nulls`` a null value
    carries them too (null-value tombstones)."""
    if not meta:
        return cast("bytes | None", message.value)
    ts = message.timestamp
    raw = message.headers or []
    headers = [(str(k), v) for k, v in (raw.items() if isinstance(raw, Mapping) else raw)]
    stamp = None if ts is None else round(ts * 1000)
    return with_metadata(message.value, message.key, headers, stamp, nulls=nulls)


class RedactingWorker(faust.Worker):  # type: ignore[misc]
    """A Faust worker that keeps seamline's redacting log handler (and ``--log-json``).

    mode's ``setup_logging`` replaces the root handlers when the worker starts; this puts
    the coordinator's handler back right after, so no record bypasses redaction.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        configure_worker_logging()


def run_worker(
    settings: LiveSettings,
    kafka_conf: Mapping[str, str],
    sink: LiveSink,
    transform: Transform,
    start_offsets: Mapping[PartitionId, Offset],
    quarantine: QuarantineSink,
) -> None:
    """Commit the table's offsets for the group, then run the Faust worker until stopped.

    Raises ``LiveError`` when the table's live offset of a partition is below the current cut's
    ``hwm`` (a new cut was taken after live stopped): the Faust engine cannot skip the
    backfill's offsets inside a batch the way the confluent engine does, so it refuses rather
    than write them twice.
    """
    positions = start_positions(start_offsets, sink.live_offsets(), start_offsets)
    behind = below_cut(positions, start_offsets)
    if behind:
        where = ", ".join(f"partition={p} start={a} hwm={b}" for p, (a, b) in sorted(behind.items()))
        raise LiveError(
            f"topic={settings.topic}: expected live to start at or after the cut, found {where}",
            hint="run `seamline live JOB` (the confluent engine) once to move past the new cut, "
            "then the Faust engine can take over",
        )
    commit_group_offsets(kafka_conf, settings.group, settings.topic, positions)
    writer = FaustBatchWriter(settings, sink, transform, start_offsets, quarantine)
    app = build_app(settings, kafka_conf, writer)
    worker = RedactingWorker(app, loglevel="INFO", quiet=True)
    worker.execute_from_commandline()
