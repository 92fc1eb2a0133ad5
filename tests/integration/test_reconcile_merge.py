"""Merge mode ("latest wins") on a real Lance merge writer: superseded offsets are not lost.

The live side writes first; then the real executor runs the history slices with
``backfill.mode = "merge"``: a history record whose key a live row holds is not written, and a
later history slice replaces an earlier record of the same key. Those source offsets are
``superseded`` (the table holds their key from a later record), not ``lost``; a record whose
key nothing later holds is still lost.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import lance
import pytest
from confluent_kafka import Producer

from backfill.sinks import open_sink
from coordinator.core.jobspec import JobSpec
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
)
from coordinator.service import reconcile
from coordinator.testing.pytest_plugin import TopicFactory
from stream.decode.json import decode_batch
from stream.decode.transform import identity
from stream.kafka.reader import iter_kafka_range
from tests.contract.backfill_writers import make_job

pytestmark = pytest.mark.integration

# per partition, the order ids in offset order: history (20 each), then live (4 each)
HISTORY = {0: [2 * i for i in range(20)], 1: [2 * i + 1 for i in range(20)]}
HISTORY[0][15] = 12  # order 12 again later in history (offset 6 first): the later one wins
LIVE = {0: [4, 100, 102, 104], 1: [7, 101, 103, 105]}  # orders 4 and 7 updated live


def _produce(bootstrap: str, topic: str, ids: dict[int, list[int]], amount: float) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for p, orders in ids.items():
        for k, order_id in enumerate(orders):
            ts = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000) + k * 60_000
            doc = {"order_id": order_id, "amount": amount + k, "ts": ts}
            producer.produce(topic, json.dumps(doc).encode(), partition=p)
    assert producer.flush(30) == 0


def _live(job: JobSpec, rng: OffsetRange) -> None:
    msgs = [m for b in iter_kafka_range(job.kafka_config(), job.stream.topic, rng) for m in b]
    rows, _ = decode_batch(msgs, job.schema_.arrow_schema(), identity, "live")
    sink = open_sink(job)
    sink.ensure_table()
    sink.append_live(
        rows, CommitToken(job.job_id, f"live-{rng.partition}", 1, Epoch(1), "live", (rng,))
    )


def test_merge_superseded_offsets_are_not_lost(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    from backfill.executor import execute_slice

    topic = kafka_topic(2)
    job = make_job("lance-merge", tmp_path, kafka_bootstrap, topic)
    assert job.backfill.mode == "merge" and job.table.key == ["order_id"]
    _produce(kafka_bootstrap, topic, HISTORY, 1.0)
    _produce(kafka_bootstrap, topic, LIVE, 500.0)
    parts = tuple(PartitionCut(PartitionId(p), Offset(0), Offset(20)) for p in (0, 1))
    cut = Cut(job.job_id, topic, parts, datetime.now(UTC), Epoch(1))
    for p in (0, 1):  # the live side is ahead: it writes first
        _live(job, OffsetRange(PartitionId(p), Offset(20), Offset(24)))
    slices = [
        Slice(
            f"h-p{p}-{a}", Scope("kafka", (OffsetRange(PartitionId(p), Offset(a), Offset(a + 10)),))
        )
        for p in (0, 1)
        for a in (0, 10)
    ]
    for s in slices:
        execute_slice(job, s, CommitToken(job.job_id, s.slice_id, 1, Epoch(1), "backfill"))

    report = reconcile(job, cut, slices, quarantine={})
    assert report.reconciled, report.to_json()
    p0, p1 = report.partitions
    assert (p0.superseded, p0.samples["superseded"]) == (2, (2, 6))  # order 4 live, 12 later
    assert (p1.superseded, p1.samples["superseded"]) == (1, (3,))  # order 7 live
    assert p0.lost == p1.lost == 0
    assert {s.slice_id: s.superseded for s in report.slices if s.superseded} == {
        "h-p0-0": 2,
        "h-p1-0": 1,
    }
    assert report.keys is not None and report.keys.domain == "table" and report.keys.ok
    assert report.totals()["superseded"] == 3

    lance.dataset(str(job.table.uri)).delete("order_id = 20")  # p0 offset 10: nothing replaced it
    bad = reconcile(job, cut, slices, quarantine={})
    assert not bad.reconciled
    p0 = bad.partitions[0]
    assert (p0.lost, p0.samples["lost"], p0.superseded) == (1, (10,), 2)
    (slice_,) = bad.mismatched
    assert slice_.slice_id == "h-p0-10" and slice_.drilldown is not None
    assert slice_.drilldown.missing == 1
