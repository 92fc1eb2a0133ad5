"""Live-side benchmark: messages/s from Kafka into the table, and commit latency over a long run.

Run (broker from KAFKA_BOOTSTRAP, default 127.0.0.1:39092)::

    uv run python -m bench.live --records 300000 --commits 5000
    uv run python -m bench.live --records 300000 --skip-latency --format lance

Part 1 pre-produces ``--records`` JSON records to a fresh 3-partition topic, then runs the live
consumer (explicit assignment, the job's default batch limits, real pipelined micro-batch
commits into a day-partitioned Iceberg table, or a Lance dataset) and reports records / second
from start until the table holds every offset. The machine is shared, so it also reports the
process CPU time per record (all threads: librdkafka, decode, Parquet) and records per
CPU-second: when that exceeds the target, one core keeps up with it whatever the other load.

Part 2 makes ``--commits`` small live commits (``--rows`` rows each) through the sink's
offset-conditional append with the maintenance the live consumer runs (manifest merging,
metadata cleanup, snapshot expiry every ``expire_snapshots_every`` commits) and reports, from
that one run, the median commit latency around commit 100 and around the last commit, and their
ratio. Commits here come back to back, far faster than the live cadence (at most one per
``min_commit_seconds``), so instead of a 60 s minimum snapshot age the table keeps the number
of snapshots the live consumer keeps at its maximum cadence (60 s / 1 s = 60).
Targets: >= 100k msg/s, ratio <= 1.5.
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

from backfill.sinks.iceberg.live import IcebergLiveTable
from coordinator.core.jobspec import LiveSpec
from coordinator.core.lineage import with_lineage
from coordinator.core.values import CommitToken, Epoch, Offset, OffsetRange, PartitionId
from stream.broker.admin import create_topic, delete_topics
from stream.decode.json import decode_columns
from stream.decode.transform import identity
from stream.live.core import BatchLimits
from stream.live.loop import LiveConsumer, LiveSettings, LiveSink

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
    root.mkdir(parents=True, exist_ok=True)
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


def _sink(root: Path, fmt: str) -> LiveSink:
    live = LiveSpec()
    if fmt == "lance":
        from backfill.sinks.lance.sink import LanceSink

        lance_sink = LanceSink(str(root / "throughput.lance"), SCHEMA, "ts")
        lance_sink.ensure_table()
        return lance_sink
    sink = IcebergLiveTable(
        _table(root, "throughput", partitioned=True),
        keep_snapshots=live.keep_snapshots,
        expire_every=live.expire_snapshots_every,
        sort_by="ts",
    )
    sink.ensure_maintenance_properties()
    return sink


def _rows(sink: LiveSink) -> int:
    if isinstance(sink, IcebergLiveTable):
        return int(sink.table.scan(selected_fields=("id",)).to_arrow().num_rows)
    import lance

    return int(lance.dataset(sink.uri).count_rows())  # type: ignore[attr-defined]


def _warm_up(root: Path, fmt: str) -> None:
    """One small commit through the same code first: a live consumer runs for hours, so the
    figure should not include the one-off imports and first-use set-up of its first commit."""
    data, rng = _batch(0, 1000)
    sink = _sink(root / "warm-up", fmt)
    sink.append_live(data, CommitToken("warm", "live:0@0-1000", 1, Epoch(1), "live", (rng,)))


def throughput(bootstrap: str, root: Path, n: int, fmt: str = "iceberg") -> float:
    """Records/s into the table through the live consumer (the job's default batch limits)."""
    topic = f"bench-live-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=3)
    try:
        ends = _produce(bootstrap, topic, n)
        _warm_up(root, fmt)
        sink = _sink(root, fmt)
        live = LiveSpec()
        settings = LiveSettings(
            job_id="bench",
            topic=topic,
            group=f"{topic}-g",
            schema=SCHEMA,
            limits=BatchLimits(
                live.batch_records,
                live.batch_seconds,
                live.min_commit_seconds,
                max_commit_share=live.max_commit_share,
            ),
            partitions=(0, 1, 2),
        )
        start = {PartitionId(p): Offset(0) for p in range(3)}
        consumer = LiveConsumer(
            settings, {"bootstrap.servers": bootstrap}, sink, identity, start, _NoQuarantine()
        )
        load = os.getloadavg()[0]
        cpu0, t0 = time.process_time(), time.perf_counter()
        runner = threading.Thread(target=consumer.run)
        runner.start()
        landed = _watch(consumer, runner, ends, t0)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        consumer.stop()
        runner.join()
        rows = _rows(sink)
        assert rows == n, f"expected {n} rows, found {rows}"
        print(
            f"throughput ({fmt}): {n} records in {elapsed:.2f} s = {n / elapsed:,.0f} msg/s "
            f"({consumer.progress.commits} commits, load average {load:.1f}); "
            f"CPU {cpu:.2f} s = {cpu / n * 1e6:.2f} us/record = {n / cpu:,.0f} records/CPU-s"
        )
        if len(landed) >= 2:  # the last batch waits batch_seconds for records that never come
            t, rows_then = landed[-2]
            print(
                f"  before the last (partial) batch: {rows_then} records landed in {t:.2f} s "
                f"= {rows_then / t:,.0f} msg/s; commits landed at "
                + ", ".join(f"{t:.2f} s ({r})" for t, r in landed)
            )
        return n / elapsed
    finally:
        delete_topics(bootstrap, [topic], timeout=10.0)


def _watch(
    consumer: LiveConsumer, runner: threading.Thread, ends: dict[int, int], t0: float
) -> list[tuple[float, int]]:
    """Wait until the table holds every offset; returns (seconds, records) at each commit."""
    landed: list[tuple[float, int]] = []
    progress = consumer.progress
    while any(progress.committed.get(PartitionId(p), 0) < e for p, e in ends.items()):
        if len(landed) < progress.commits:
            landed.append((time.perf_counter() - t0, progress.records))
        time.sleep(0.005)
        if not runner.is_alive():
            raise RuntimeError("consumer stopped early")
    landed.append((time.perf_counter() - t0, progress.records))
    return landed


def _batch(start: int, rows: int) -> tuple[pa.Table, OffsetRange]:
    offsets = list(range(start, start + rows))
    values = [json.dumps({"id": o, "ts": 1_700_000_000_000 + o}).encode() for o in offsets]
    data, _ = decode_columns([0] * rows, offsets, values, SCHEMA, identity, "live")
    return data, OffsetRange(PartitionId(0), Offset(start), Offset(start + rows))


def commit_latency(root: Path, commits: int, rows: int) -> float:
    """Median latency near commit 100 vs near the last commit, in one run; returns the ratio."""
    live = LiveSpec()
    live_window = 60.0  # the live sink never expires snapshots younger than this
    sink = IcebergLiveTable(
        _table(root, "latency", partitioned=True),
        keep_snapshots=max(live.keep_snapshots, int(live_window / live.min_commit_seconds)),
        expire_every=live.expire_snapshots_every,
        min_snapshot_age_s=0.0,
        sort_by="ts",
    )
    sink.ensure_maintenance_properties()
    lat: list[float] = []
    cpu: list[float] = []
    for i in range(commits):
        data, rng = _batch(i * rows, rows)
        token = CommitToken("bench", f"live:0@{rng.start}-{rng.end}", 1, Epoch(1), "live", (rng,))
        c0, t0 = time.process_time(), time.perf_counter()
        sink.append_live(data, token)
        lat.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if (i + 1) % 500 == 0:
            print(f"  commit {i + 1}: median of last 100 {_ms(lat[-100:])} (CPU {_ms(cpu[-100:])})")
    early, late = statistics.median(lat[89:110]), statistics.median(lat[-21:])
    cpu_ratio = statistics.median(cpu[-21:]) / statistics.median(cpu[89:110])
    meta = sink.table.metadata
    print(
        f"commit latency: median @100 = {early * 1000:.1f} ms, @{commits} = {late * 1000:.1f} ms, "
        f"ratio = {late / early:.2f} (CPU time ratio {cpu_ratio:.2f}; "
        f"p95 of last 200 = {sorted(lat[-200:])[189] * 1000:.1f} ms; "
        f"snapshots kept = {len(meta.snapshots)}, snapshot-log = {len(meta.snapshot_log)}, "
        f"data files = {_data_files(sink)})"
    )
    return late / early


def _ms(lat: list[float]) -> str:
    return f"{statistics.median(lat) * 1000:.1f} ms"


def _data_files(sink: IcebergLiveTable) -> int:
    snap = sink.table.current_snapshot()
    return int(str(snap.summary["total-data-files"] or 0)) if snap and snap.summary else 0


def main() -> None:
    """Run both parts and print figures and ratios."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--commits", type=int, default=5000)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--format", choices=("iceberg", "lance"), default="iceberg")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:39092")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_throughput:
            rate = throughput(bootstrap, root, args.records, args.format)
            print(f"target >= 100,000 msg/s: {'met' if rate >= 100_000 else 'NOT met'}")
        if not args.skip_latency:
            ratio = commit_latency(root, args.commits, args.rows)
            print(f"target ratio <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
