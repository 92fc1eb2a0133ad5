"""Live-side benchmark: messages/s from Kafka into Iceberg, and commit latency over 5,000 commits.

Run (broker from KAFKA_BOOTSTRAP, default 127.0.0.1:39092)::

    uv run python -m bench.live --records 300000 --commits 5000

Part 1 pre-produces ``--records`` JSON records to a fresh 3-partition topic, then runs the live
consumer (explicit assignment, real micro-batch commits into a day-partitioned Iceberg table)
and reports records / second from start until the table holds every offset.

Part 2 makes ``--commits`` small live commits (``--rows`` rows each) through the same
offset-conditional append with the maintenance the live sink uses (manifest merging, metadata
cleanup, snapshot expiry every 50 commits keeping 20) and reports the commit latency around
commit 100 and around the last commit, and their ratio. Targets: >= 100k msg/s, ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
from confluent_kafka import Producer
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.transforms import DayTransform

from coordinator.lineage import with_lineage
from coordinator.values import CommitToken, Epoch, Offset, OffsetRange, PartitionId
from stream.broker_admin import create_topic, delete_topics
from stream.decode import RawMessage, decode_batch_fast, identity
from stream.live import LiveConsumer, LiveSettings
from stream.live_core import BatchLimits
from stream.live_iceberg import IcebergLiveTable

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("name", pa.string()),
        pa.field("amount", pa.float64()),
    ]
)


class _NoQuarantine:
    def write(self, records: Any) -> None:
        if records:
            raise RuntimeError(f"unexpected quarantine of {len(records)} records")


def _table(root: Path, name: str, partitioned: bool) -> Any:
    catalog = SqlCatalog(
        "bench", uri=f"sqlite:///{root / 'catalog.db'}", warehouse=(root / "wh").as_uri()
    )
    if not catalog.namespace_exists("bench"):
        catalog.create_namespace("bench")
    table = catalog.create_table(f"bench.{name}", schema=with_lineage(SCHEMA))
    if partitioned:
        with table.update_spec() as spec:
            spec.add_field("ts", DayTransform(), "ts_day")
    return catalog.load_table(f"bench.{name}")


def _produce(bootstrap: str, topic: str, n: int) -> dict[int, int]:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1 << 20})
    base = 1_700_000_000_000
    for i in range(n):
        doc = {"id": i, "ts": base + i * 1000, "name": f"n{i % 1000}", "amount": i * 0.25}
        while True:
            try:
                producer.produce(topic, json.dumps(doc).encode(), partition=i % 3)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    return {p: len(range(p, n, 3)) for p in range(3)}


def throughput(bootstrap: str, root: Path, n: int) -> float:
    """Records/s into Iceberg through the live consumer."""
    topic = f"bench-live-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=3)
    try:
        ends = _produce(bootstrap, topic, n)
        sink = IcebergLiveTable(_table(root, "throughput", partitioned=True), sort_by="ts")
        sink.ensure_maintenance_properties()
        settings = LiveSettings(
            job_id="bench",
            topic=topic,
            group=f"{topic}-g",
            schema=SCHEMA,
            limits=BatchLimits(100_000, 2.0, 1.0),
            partitions=(0, 1, 2),
        )
        start = {PartitionId(p): Offset(0) for p in range(3)}
        consumer = LiveConsumer(
            settings, {"bootstrap.servers": bootstrap}, sink, identity, start, _NoQuarantine()
        )
        t0 = time.perf_counter()
        runner = threading.Thread(target=consumer.run)
        runner.start()
        while any(consumer.progress.committed.get(PartitionId(p), 0) < e for p, e in ends.items()):
            time.sleep(0.05)
            if not runner.is_alive():
                raise RuntimeError("consumer stopped early")
        elapsed = time.perf_counter() - t0
        consumer.stop()
        runner.join()
        rows = sink.table.scan(selected_fields=("id",)).to_arrow().num_rows
        assert rows == n, f"expected {n} rows, found {rows}"
        print(
            f"throughput: {n} records in {elapsed:.2f} s = {n / elapsed:,.0f} msg/s "
            f"({consumer.progress.commits} commits)"
        )
        return n / elapsed
    finally:
        delete_topics(bootstrap, [topic], timeout=10.0)


def _batch(start: int, rows: int) -> tuple[pa.Table, OffsetRange]:
    msgs = [
        RawMessage(0, o, json.dumps({"id": o, "ts": 1_700_000_000_000 + o}).encode())
        for o in range(start, start + rows)
    ]
    data, _ = decode_batch_fast(msgs, SCHEMA, identity, "live")
    return data, OffsetRange(PartitionId(0), Offset(start), Offset(start + rows))


def commit_latency(root: Path, commits: int, rows: int) -> float:
    """Median latency near commit 100 vs near the last commit; returns the ratio."""
    sink = IcebergLiveTable(
        _table(root, "latency", partitioned=False),
        keep_snapshots=20,
        expire_every=50,
        min_snapshot_age_s=0.0,
    )
    sink.ensure_maintenance_properties()
    lat: list[float] = []
    for i in range(commits):
        data, rng = _batch(i * rows, rows)
        token = CommitToken("bench", f"live:0@{rng.start}-{rng.end}", 1, Epoch(1), "live", (rng,))
        t0 = time.perf_counter()
        sink.append_live(data, token)
        lat.append(time.perf_counter() - t0)
        if (i + 1) % 1000 == 0:
            print(
                f"  commit {i + 1}: median of last 100 {statistics.median(lat[-100:]) * 1000:.1f} ms"
            )
    early = lat[89:110]
    late = lat[-21:]
    e, la = statistics.median(early), statistics.median(late)
    p95 = sorted(lat[-200:])[189]
    print(
        f"commit latency: median @100 = {e * 1000:.1f} ms, @{commits} = {la * 1000:.1f} ms, "
        f"ratio = {la / e:.2f} (p95 of last 200 = {p95 * 1000:.1f} ms, "
        f"snapshots kept = {len(sink.table.snapshots())})"
    )
    return la / e


def main() -> None:
    """Run both parts and print figures and ratios."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--commits", type=int, default=5000)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:39092")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_throughput:
            rate = throughput(bootstrap, root, args.records)
            print(f"target >= 100,000 msg/s: {'met' if rate >= 100_000 else 'NOT met'}")
        if not args.skip_latency:
            ratio = commit_latency(root, args.commits, args.rows)
            print(f"target ratio <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
