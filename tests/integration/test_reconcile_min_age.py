"""``seamline reconcile --min-age``: records still in flight on the live side.

The topic holds history (below the cut, written by the real executor), older live records
(written by the live side) and the newest records, produced just now, that the live side has
not written yet (it has not caught up). With ``--min-age`` the young records are left out and
the run reconciles; without it they are reported as ``in_flight`` and the run fails; a record
older than the bound that the live side lost still fails with ``--min-age`` (no hidden loss).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import lance
import pytest
from confluent_kafka import Producer

from backfill.sinks.lance.sink import LanceSink
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
)
from coordinator.testing.pytest_plugin import TopicFactory
from stream.decode.json import decode_batch
from stream.decode.transform import identity
from stream.kafka.reader import iter_kafka_range
from tests.integration.test_reconcile_support import reconcile_json, run_slices, store_plan

pytestmark = pytest.mark.integration

JOB = """[job]
id = "minage"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
[schema]
event_time = "ts"
required = ["id", "ts"]
[schema.fields]
id = "int64"
name = "string"
ts = "timestamp_ms"
[table]
format = "lance"
uri = "minage.lance"
[backfill]
slice_records = 25
"""

HOUR_MS = 3_600_000


def _produce(bootstrap: str, topic: str, start: int, n: int, age_ms: int | None) -> dict[int, int]:
    """``n`` records per partition (2 partitions), Kafka timestamps ``age_ms`` in the past
    (``None``: now); returns the end offset per partition."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    ends: dict[int, int] = {}

    def done(err: object, msg: object) -> None:
        assert err is None, err
        p, o = msg.partition(), msg.offset()  # type: ignore[attr-defined]
        ends[p] = max(ends.get(p, 0), o + 1)

    for i in range(start, start + n):
        for p in (0, 1):
            value = json.dumps({"id": 2 * i + p, "name": f"n{i}", "ts": 1_700_000_000_000 + i})
            stamp = 0 if age_ms is None else int(time.time() * 1000) - age_ms  # 0: now
            producer.produce(topic, value.encode(), partition=p, on_delivery=done, timestamp=stamp)
    assert producer.flush(30) == 0
    return ends


def _live_append(job: JobSpec, sink: LanceSink, rng: OffsetRange) -> None:
    """The live side writes ``rng`` (one micro-batch, offsets stored with the commit)."""
    msgs = [m for b in iter_kafka_range(job.kafka_config(), job.stream.topic, rng) for m in b]
    rows, bad = decode_batch(msgs, job.schema_.arrow_schema(), identity, "live")
    assert not bad
    token = CommitToken(job.job_id, f"live-{rng.partition}", 1, Epoch(1), "live", (rng,))
    sink.append_live(rows, token)


def test_min_age_leaves_young_records_out_and_hides_no_loss(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(2)
    path = tmp_path / "minage.toml"
    path.write_text(JOB.format(bootstrap=kafka_bootstrap, topic=topic), encoding="utf-8")
    job = load_job(path)
    hwm = _produce(kafka_bootstrap, topic, 0, 40, age_ms=3 * HOUR_MS)  # history
    old = _produce(kafka_bootstrap, topic, 40, 20, age_ms=HOUR_MS)  # live, written
    young = _produce(kafka_bootstrap, topic, 60, 5, age_ms=None)  # live, in flight
    parts = tuple(PartitionCut(PartitionId(p), Offset(0), Offset(hwm[p])) for p in (0, 1))
    slices = [
        Slice(f"h-p{p}-{a}", Scope("kafka", (OffsetRange(PartitionId(p), Offset(a), Offset(b)),)))
        for p in (0, 1)
        for a, b in ((0, 20), (20, hwm[p]))
    ]
    store = store_plan(job, Cut(job.job_id, topic, parts, datetime.now(UTC), Epoch(1)), slices)
    run_slices(job, store, slices)
    sink = LanceSink(str(tmp_path / "minage.lance"), job.schema_.arrow_schema(), "ts")
    for p in (0, 1):
        _live_append(job, sink, OffsetRange(PartitionId(p), Offset(hwm[p]), Offset(old[p])))

    code, doc = reconcile_json(str(path), "--min-age", "600")
    assert code == 0, json.dumps(doc["totals"])
    assert doc["min_age_s"] == 600
    for part in doc["partitions"]:
        p = part["partition"]
        assert (part["end"], part["left_out"], part["in_flight"]) == (old[p], young[p] - old[p], 0)
        assert part["source_records"] == old[p] == part["table_rows"]
    assert store.latest_reconcile(job.job_id) is not None

    code, doc = reconcile_json(str(path))
    assert code == 1
    totals = doc["totals"]
    assert (totals["in_flight"], totals["lost"], totals["gap"], totals["left_out"]) == (10, 0, 0, 0)
    assert [part["samples"]["in_flight"] for part in doc["partitions"]] == [
        list(range(old[p], young[p])) for p in (0, 1)
    ]

    victim = old[0] - 3  # an old live record, older than the bound: its loss is not excused
    lance.dataset(str(tmp_path / "minage.lance")).delete(
        f"_kafka_partition = 0 AND _kafka_offset = {victim}"
    )
    code, doc = reconcile_json(str(path), "--min-age", "600")
    assert code == 1
    (p0, p1) = doc["partitions"]
    assert (p0["lost"], p0["in_flight"], p0["samples"]["lost"]) == (1, 0, [victim])
    assert p1["ok"] is True
    (bad,) = [s for s in doc["slices"] if s["verdict"] == "mismatch"]
    assert bad["kind"] == "live" and bad["drilldown"]["missing"] == 1
    store.close()
