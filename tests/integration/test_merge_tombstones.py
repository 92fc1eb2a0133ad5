"""Merge-mode tombstones (``[table] delete_when``) on Iceberg and Lance, real broker and tables.

An archive of keys 1..10; a topic whose history (below the cut) deletes archive keys, corrects
one, deletes a topic key and deletes-then-revives another; live records (above the cut) that
delete an archive key, a key whose OLDER version sits in a history slice, and a history key.
The live side commits FIRST, so every history slice (and the archive slice) commits after a
newer live tombstone; one history slice is then replayed. The test reads the table itself:
one row per key, deleted keys only as marker rows (``_seamline_deleted``), visible rows hold
the newest version; the reconciler (tombstones counted apart, deleted keys neither lost nor
duplicated) and the independent oracle agree.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from backfill.executor import execute_slice
from backfill.sinks import open_sink
from backfill.sources.archive import read_archive_slice
from coordinator.core import lineage
from coordinator.core.errors import ExitCode, WriterError
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.core.values import (
    CommitToken,
    Cut,
    Epoch,
    Offset,
    OffsetRange,
    PartitionCut,
    PartitionId,
    Scope,
    Slice,
    TimeBucket,
)
from coordinator.run.prepare import ensure_cut
from coordinator.service import reconcile, run_live
from coordinator.testing.oracle import check, read_table
from coordinator.testing.pytest_plugin import TopicFactory
from stream.decode.json import decode_batch
from stream.decode.transform import identity
from stream.kafka.reader import iter_kafka_range
from tests.integration.test_e2e_support import (
    ZERO,
    counts,
    job_path,
    json_out,
    live_consumer,
    seamline,
    take_cut,
    wait_until,
)

pytestmark = pytest.mark.integration

DAY = datetime(2024, 1, 1, tzinfo=UTC)
TS = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000)
# (order_id, op) in offset order on partition 0; "d" is the declared tombstone
HISTORY = [
    (21, "u"),
    (22, "u"),
    (1, "d"),
    (2, "d"),
    (6, "u"),
    (22, "d"),
    (23, "u"),
    (23, "d"),
    (23, "u"),
    (24, "u"),
]
LIVE = [(6, "d"), (9, "d"), (24, "d"), (3, "u")]
HWM = len(HISTORY)


_SCHEMA = """[schema]
event_time = "ts"
required = ["order_id", "ts"]
[schema.fields]
order_id = "int64"
amount = "float64"
ts = "timestamp_ms"
op = "string"
"""
_ARCHIVE = """[[history.archive]]
glob = "{root}/archive/*.parquet"
format = "parquet"
bucket = "day"
"""


def _job(
    fmt: str,
    root: Path,
    bootstrap: str,
    topic: str,
    *,
    schema: str = _SCHEMA,
    marker: str = '{ field = "op", equals = "d" }',
    archive: bool = True,
) -> JobSpec:
    """The job file (``job.toml`` under ``root``, so ``seamline`` processes can run it)."""
    if fmt == "iceberg":
        (root / "warehouse").mkdir()
        table = (
            f'format = "iceberg"\nidentifier = "tomb.orders"\n'
            f'catalog_uri = "sqlite:///{root / "cat.db"}"\nwarehouse = "{root / "warehouse"}"'
        )
    else:
        table = f'format = "lance"\nuri = "{root / "orders.lance"}"'
    path = root / "job.toml"
    path.write_text(
        f"""[job]
id = "tomb"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "{topic}-live"
{schema}
[table]
{table}
key = ["order_id"]
partition_by = "day"
delete_when = {marker}
[history]
kafka = true
{_ARCHIVE.format(root=root) if archive else ""}
[backfill]
mode = "merge"
slice_records = 5
[live]
batch_records = 100
batch_seconds = 0.2
min_commit_seconds = 0.2
[state]
url = "sqlite:///{root / "state.db"}"
""",
        encoding="utf-8",
    )
    return load_job(path)


def _archive(root: Path) -> None:
    ids = list(range(1, 11))
    (root / "archive").mkdir()
    pq.write_table(
        pa.table(
            {
                "order_id": pa.array(ids, pa.int64()),
                "amount": pa.array([float(i) for i in ids]),
                "ts": pa.array([DAY + timedelta(hours=i) for i in ids], pa.timestamp("ms", "UTC")),
                "op": pa.array(["u"] * len(ids)),
            }
        ),
        root / "archive" / "a.parquet",
    )


def _produce(bootstrap: str, topic: str, docs: list[tuple[int, str]], first: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for k, (order_id, op) in enumerate(docs):
        doc = {"order_id": order_id, "amount": 100.0 * (first + k), "ts": TS, "op": op}
        producer.produce(topic, json.dumps(doc).encode(), partition=0)
    assert producer.flush(30) == 0


def _live(job: JobSpec, rng: OffsetRange) -> None:
    msgs = [m for b in iter_kafka_range(job.kafka_config(), job.stream.topic, rng) for m in b]
    rows, _ = decode_batch(msgs, job.schema_.arrow_schema(), identity, "live")
    open_sink(job).append_live(rows, CommitToken(job.job_id, "live-0", 1, Epoch(1), "live", (rng,)))


def _rng(a: int, b: int) -> OffsetRange:
    return OffsetRange(PartitionId(0), Offset(a), Offset(b))


def _assert_table(job: JobSpec) -> None:
    """Read the table itself: one row per key, deleted keys only as marker rows holding their
    tombstone, visible rows holding the newest version."""
    rows = open_sink(job).scan().to_pylist()  # the table itself, every row
    ids = [r["order_id"] for r in rows]
    assert len(ids) == len(set(ids)), "one row per key, marker rows included"
    deleted = {r["order_id"] for r in rows if r[lineage.DELETED]}
    assert deleted == {1, 2, 6, 9, 22, 24}
    visible = {r["order_id"]: r["amount"] for r in rows if not r[lineage.DELETED]}
    assert visible == {3: 1300.0, 4: 4.0, 5: 5.0, 7: 7.0, 8: 8.0, 10: 10.0, 21: 0.0, 23: 800.0}
    marker = {r["order_id"]: (r["_kafka_offset"], r["op"]) for r in rows if r[lineage.DELETED]}
    assert marker == {
        1: (2, "d"),
        2: (3, "d"),
        6: (10, "d"),
        9: (11, "d"),
        22: (5, "d"),
        24: (12, "d"),
    }  # each key's newest version: its tombstone


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_a_tombstone_deletes_its_key_and_no_older_version_brings_it_back(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(1)
    job = _job(fmt, tmp_path, kafka_bootstrap, topic)
    _archive(tmp_path)
    _produce(kafka_bootstrap, topic, HISTORY, 0)
    _produce(kafka_bootstrap, topic, LIVE, HWM)
    cut = Cut(
        job.job_id,
        topic,
        (PartitionCut(PartitionId(0), Offset(0), Offset(HWM)),),
        datetime.now(UTC),
        Epoch(1),
    )
    open_sink(job).ensure_table()
    _live(job, _rng(HWM, HWM + len(LIVE)))  # live tombstones land before any history
    slices = [
        Slice(
            "a-day",
            Scope("archive", bucket=TimeBucket(DAY, DAY + timedelta(days=1))),
            files=(str(tmp_path / "archive" / "a.parquet"),),
        ),
        Slice("h-0", Scope("kafka", (_rng(0, 5),))),
        Slice("h-5", Scope("kafka", (_rng(5, HWM),))),
    ]
    for s in slices:
        execute_slice(job, s, CommitToken(job.job_id, s.slice_id, 1, Epoch(1), "backfill"))
    replay = slices[1]  # the slice holding key 6's older version, replayed as a new attempt
    execute_slice(job, replay, CommitToken(job.job_id, replay.slice_id, 2, Epoch(1), "backfill"))

    _assert_table(job)

    report = reconcile(job, cut, slices, quarantine={})
    assert report.reconciled, report.to_json()
    totals = report.totals()
    assert (totals["lost"], totals["duplicated"], totals["duplicate_keys"]) == (0, 0, 0)
    assert (totals["tombstones"], totals["deleted_keys"]) == (7, 6), totals
    assert totals["kafka_records"] == HWM + len(LIVE)
    oracle = check(job, {0: HWM}, key="order_id")
    assert oracle.anomalies == 0, oracle.to_json()
    assert (oracle.deleted_keys, oracle.tombstones) == (6, 7)
    if fmt == "lance":  # a deleted key made visible again is caught by both checkers
        lance.dataset(str(job.table.uri)).update({lineage.DELETED: "false"}, where="order_id = 6")
        bad = reconcile(job, cut, slices, quarantine={})
        assert not bad.reconciled and [s.slice_id for s in bad.mismatched] == ["live-p0-10"]
        assert check(job, {0: HWM}, key="order_id").resurrected == 1


@pytest.mark.slow  # ~35 s on the shared 2-core machine: two process start-ups and a pool
def test_seamline_run_and_the_live_loop_keep_deleted_keys_deleted(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    """The same through ``seamline live`` (the real live loop writes the live tombstones
    first) and ``seamline run`` (planned slices, then its own reconcile). Lance only: the
    process start-ups make it the longest test here, and the Iceberg writers run the same
    tombstone code in the test above."""
    topic = kafka_topic(1)
    job = _job("lance", tmp_path, kafka_bootstrap, topic)
    _archive(tmp_path)
    _produce(kafka_bootstrap, topic, HISTORY, 0)
    take_cut(job)
    open_sink(job).ensure_table()
    with live_consumer(job) as live:
        _produce(kafka_bootstrap, topic, LIVE, HWM)
        end = HWM + len(LIVE)
        wait_until(lambda: open_sink(job).live_offsets().get(PartitionId(0)) == end, 60, "live")
        final = seamline("run", job_path(job), "--output", "json")
        assert final.returncode == ExitCode.OK, final.stdout[-3000:] + final.stderr[-3000:]
        doc = json_out(final)
        assert live.poll() is None, "the live consumer ran throughout"
    assert doc["reconciled"] is True, doc
    _assert_table(job)
    totals = doc["reconcile"]
    assert counts(totals) == ZERO, totals
    assert (totals["tombstones"], totals["deleted_keys"]) == (7, 6), totals


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_a_table_created_without_the_marker_column_is_refused_not_silently_kept(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    job = _job(fmt, tmp_path, kafka_bootstrap, kafka_topic(1))
    before = job.model_copy(update={"table": job.table.model_copy(update={"delete_when": None})})
    open_sink(before).ensure_table()  # a merge table from before tombstones were declared
    _archive(tmp_path)
    bucket = Scope("archive", bucket=TimeBucket(DAY, DAY + timedelta(days=1)))
    slice_ = Slice("a-day", bucket, files=(str(tmp_path / "archive" / "a.parquet"),))
    with pytest.raises(WriterError, match="expected a _seamline_deleted column") as info:
        sink = open_sink(job)
        sink.ensure_table()
        rows = read_archive_slice(job, slice_)
        sink.write_slice(bucket, rows, CommitToken(job.job_id, "a-day", 1, Epoch(1), "backfill"))
    assert "delete_when" in str(info.value) and info.value.hint
    assert open_sink(before).scan().num_rows == 0  # nothing was written


_KEYED = """[schema]
event_time = "ts"
required = ["order_id", "ts"]
[schema.fields]
order_id = "int64"
amount = "float64"
ts = "timestamp_ms"
[schema.kafka]
order_id = "key"
"""
# (message key, amount or None: a null value) in offset order on partition 0
NULL_HISTORY = [(1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0), (5, 50.0), (1, None), (2, None)]
NULL_LIVE = [(3, None), (1, 11.0), (5, 55.0)]  # deletes a history key, revives a deleted one
DAY_MS = 86_400_000


def _produce_keyed(
    bootstrap: str, topic: str, docs: list[tuple[int, float | None]], first: int
) -> None:
    """Keyed messages from offset ``first``; offset ``o`` has the Kafka timestamp ``TS + o``
    days (so a tombstone's event time, its Kafka timestamp, is a later day than its key's
    value: the merge must find the key's row in another day partition)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for k, (order_id, amount) in enumerate(docs):
        value = None if amount is None else json.dumps({"amount": amount, "ts": TS}).encode()
        producer.produce(topic, value=value, key=str(order_id).encode(), partition=0,
                         timestamp=TS + DAY_MS * (first + k))  # fmt: skip
    assert producer.flush(30) == 0


def _kafka_time(offset: int) -> datetime:
    """The Kafka timestamp :func:`_produce_keyed` gives ``offset``."""
    return datetime.fromtimestamp((TS + DAY_MS * offset) / 1000, UTC)


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_a_keyed_null_value_deletes_its_key_from_history_and_live(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    """``delete_when = { null_value = true }``: null values below the cut (history slices)
    and above it (the real confluent live loop, which commits FIRST, so a history tombstone
    commits after the live re-insert of its key) become marker rows; the table read with the
    format's own library holds deleted keys only as marker rows, the re-inserted key with its
    newest value, the others intact; the cut's watermark, the reconciler and the oracle count
    the null values as tombstones, not quarantined, not lost."""
    topic = kafka_topic(1)
    job = _job(fmt, tmp_path, kafka_bootstrap, topic, schema=_KEYED,
               marker="{ null_value = true }", archive=False)  # fmt: skip
    _produce_keyed(kafka_bootstrap, topic, NULL_HISTORY, 0)
    cut = ensure_cut(job)
    hwm = len(NULL_HISTORY)
    assert cut.hwm(0) == hwm
    assert cut.watermark_ms == TS + DAY_MS * (hwm - 1)  # the last record: a tombstone's timestamp
    open_sink(job).ensure_table()
    stop = threading.Event()
    live = threading.Thread(target=run_live, args=(job, stop), kwargs={"partitions": (0,)})
    live.start()
    try:
        _produce_keyed(kafka_bootstrap, topic, NULL_LIVE, hwm)
        end = hwm + len(NULL_LIVE)
        wait_until(lambda: open_sink(job).live_offsets().get(PartitionId(0)) == end, 30, "live")
    finally:
        stop.set()
        live.join(30)
    slices = [Slice("h-0", Scope("kafka", (_rng(0, 5),))), Slice("h-5", Scope("kafka", (_rng(5, hwm),)))]
    for s in slices:
        execute_slice(job, s, CommitToken(job.job_id, s.slice_id, 1, cut.epoch, "backfill"))

    rows = read_table(job).to_pylist()  # the table itself, with the format's own library
    ids = [r["order_id"] for r in rows]
    assert len(ids) == len(set(ids)), "one row per key, marker rows included"
    visible = {r["order_id"]: r["amount"] for r in rows if not r[lineage.DELETED]}
    assert visible == {1: 11.0, 4: 40.0, 5: 55.0}
    markers = {
        r["order_id"]: (r["_kafka_offset"], r["_seamline_side"], r["amount"], r["ts"])
        for r in rows
        if r[lineage.DELETED]
    }
    assert markers == {2: (6, "backfill", None, _kafka_time(6)), 3: (7, "live", None, _kafka_time(7))}

    report = reconcile(job, cut, slices, quarantine={})
    assert report.reconciled, report.to_json()
    totals = report.totals()
    assert (totals["lost"], totals["quarantined"], totals["duplicate_keys"]) == (0, 0, 0), totals
    assert (totals["tombstones"], totals["deleted_keys"]) == (3, 2), totals
    assert totals["kafka_records"] == hwm + len(NULL_LIVE)
    oracle = check(job, {0: hwm}, key="order_id")
    assert oracle.anomalies == 0 and oracle.poison == 0, oracle.to_json()
    assert (oracle.deleted_keys, oracle.tombstones) == (2, 3)
