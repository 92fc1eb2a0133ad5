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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from backfill.executor import execute_slice
from backfill.sinks import open_sink
from coordinator.core import lineage
from coordinator.core.jobspec import JobSpec, parse_job
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
from coordinator.service import reconcile
from coordinator.testing.oracle import check
from coordinator.testing.pytest_plugin import TopicFactory
from stream.decode.json import decode_batch
from stream.decode.transform import identity
from stream.kafka.reader import iter_kafka_range

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


def _job(fmt: str, root: Path, bootstrap: str, topic: str) -> JobSpec:
    table: dict[str, Any] = {
        "format": fmt,
        "key": ["order_id"],
        "partition_by": "day",
        "delete_when": {"field": "op", "equals": "d"},
    }
    if fmt == "iceberg":
        (root / "warehouse").mkdir()
        table |= {
            "identifier": "tomb.orders",
            "catalog_uri": f"sqlite:///{root / 'cat.db'}",
            "warehouse": (root / "warehouse").as_uri(),
        }
    else:
        table |= {"uri": str(root / "orders.lance")}
    doc = {
        "job": {"id": "tomb"},
        "stream": {"bootstrap": bootstrap, "topic": topic},
        "schema": {
            "fields": {
                "order_id": "int64",
                "amount": "float64",
                "ts": "timestamp_ms",
                "op": "string",
            },
            "required": ["order_id", "ts"],
            "event_time": "ts",
        },
        "table": table,
        "history": {
            "kafka": True,
            "archive": [
                {"glob": str(root / "archive" / "*.parquet"), "format": "parquet", "bucket": "day"}
            ],
        },
        "backfill": {"mode": "merge"},
    }
    return parse_job(doc, base_dir=root, default_id="tomb")


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

    report = reconcile(job, cut, slices, quarantine={})
    assert report.reconciled, report.to_json()
    totals = report.totals()
    assert (totals["lost"], totals["duplicated"], totals["duplicate_keys"]) == (0, 0, 0)
    assert (totals["tombstones"], totals["deleted_keys"]) == (7, 6), totals
    assert totals["kafka_records"] == HWM + len(LIVE)
    oracle = check(job, {0: HWM}, key="order_id")
    assert oracle.anomalies == 0, oracle.to_json()
    assert (oracle.deleted_keys, oracle.tombstones) == (6, 7)
