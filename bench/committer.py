"""One committer per table: per-slice cost with each worker committing its own slice against
the coordinator committing staged slices in batches, measured in one run.

    KAFKA_BOOTSTRAP=127.0.0.1:9092 uv run python -m bench.committer [--formats iceberg,lance]

On one topic of ``--partitions`` x ``--records`` small records, cut into slices of
``--slice-records`` (many small slices: the fixed cost per slice dominates), each format runs
``seamline run`` (in process, the real executor and worker processes) into a fresh table twice:
``committer = "worker"`` (one table commit per slice) and ``committer = "coordinator"`` (up to
``--batch`` slices per commit). Printed per run: the slice phase's wall time (from the runner's
start to its end, reconciliation excluded), milliseconds per slice, the table commits made
(seamline commits in the table's history) and commit-conflict retries; then the ratio
worker / coordinator per format. Every run must end reconciled. First, the median time the
slice reader takes for one 10-record range (its fixed cost per Kafka slice).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from backfill.sinks import open_sink
from coordinator.core.jobspec import load_job
from coordinator.service import run_job

TABLES = {
    "iceberg": 'format = "iceberg"\nidentifier = "bench.orders"\n'
    'catalog_uri = "sqlite:///{root}/catalog.db"\nwarehouse = "{root}/warehouse"',
    "lance": 'format = "lance"\nuri = "{root}/orders.lance"',
}


class Timer:
    """A progress sink that only notes when the slice phase starts and stops."""

    def __init__(self) -> None:
        self.began = self.ended = 0.0

    def start(self, total: int, done: int) -> None:
        self.began = time.perf_counter()

    def slice_done(self, rows: int) -> None:
        pass

    def retry(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def stop(self) -> None:
        self.ended = time.perf_counter()


def produce(bootstrap: str, topic: str, partitions: int, records: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, partitions, 1,
                                           config={"retention.ms": "-1"})]).values():  # fmt: skip
        f.result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    n = 0
    for p in range(partitions):
        for _ in range(records):
            doc = {"order_id": n, "ts": 1_704_067_200_000 + n * 60_000, "amount": 1.5}
            producer.produce(topic, json.dumps(doc).encode(), partition=p)
            n += 1
    assert producer.flush(60) == 0


def range_reads(bootstrap: str, topic: str, n: int = 10) -> float:
    """Median milliseconds to read one 10-record Kafka range with the slice reader (a fresh
    consumer each time, as a slice does)."""
    from coordinator.core.values import Offset, OffsetRange, PartitionId
    from stream.kafka.reader import iter_kafka_range

    times = []
    for k in range(n):
        rng = OffsetRange(PartitionId(0), Offset(10 * k), Offset(10 * k + 10))
        t = time.perf_counter()
        got = sum(len(b) for b in iter_kafka_range({"bootstrap.servers": bootstrap}, topic, rng))
        times.append(time.perf_counter() - t)
        assert got == 10, got
    return 1000 * sorted(times)[n // 2]


def one_run(fmt: str, committer: str, root: Path, topic: str, args: argparse.Namespace) -> dict:
    root.mkdir(parents=True)
    (root / "warehouse").mkdir()
    (root / "job.toml").write_text(f"""
[job]
id = "bench-{committer}"
[stream]
bootstrap = "{args.bootstrap}"
topic = "{topic}"
[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"
amount = "float64"
[table]
{TABLES[fmt].format(root=root)}
partition_by = "day"
[backfill]
slice_records = {args.slice_records}
concurrency = {args.workers}
committer = "{committer}"
commit_batch_slices = {args.batch}
""")
    job = load_job(root / "job.toml")
    timer = Timer()
    outcome = run_job(job, lag_gate=lambda: None, progress=timer, timeout_s=30)
    if not outcome.reconciled:
        raise SystemExit(f"{fmt}/{committer}: expected a reconciled run, found {outcome.code}")
    seconds = timer.ended - timer.began
    slices = outcome.run.total
    commits = len({c.snapshot_id for c in open_sink(job).commits()})
    return {"format": fmt, "committer": committer, "slices": slices, "seconds": seconds,
            "ms_per_slice": 1000 * seconds / slices, "commits": commits,
            "retries": outcome.run.retries}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="iceberg,lance")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--records", type=int, default=200, help="records per partition")
    ap.add_argument("--slice-records", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="commit_batch_slices")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"))
    args = ap.parse_args()
    if not args.bootstrap:
        raise SystemExit("expected --bootstrap or KAFKA_BOOTSTRAP (a running broker)")
    topic = f"bench-committer-{uuid.uuid4().hex[:8]}"
    produce(args.bootstrap, topic, args.partitions, args.records)
    print(f"one 10-record range read by the slice reader: {range_reads(args.bootstrap, topic):.1f} "
          "ms (median of 10)")
    print(f"{args.partitions} partitions x {args.records} records, slices of "
          f"{args.slice_records}, {args.workers} workers, batches of {args.batch}")  # fmt: skip
    print(f"{'format':<8} {'committer':<12} {'slices':>6} {'seconds':>8} {'ms/slice':>9} "
          f"{'commits':>8} {'retries':>8}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-committer-") as tmp:
        for fmt in args.formats.split(","):
            rows = {}
            for committer in ("worker", "coordinator"):
                r = one_run(fmt, committer, Path(tmp) / f"{fmt}-{committer}", topic, args)
                rows[committer] = r
                print(f"{fmt:<8} {committer:<12} {r['slices']:>6} {r['seconds']:>8.2f} "
                      f"{r['ms_per_slice']:>9.1f} {r['commits']:>8} {r['retries']:>8}",
                      flush=True)  # fmt: skip
            ratio = rows["worker"]["seconds"] / rows["coordinator"]["seconds"]
            print(f"{fmt:<8} worker / coordinator slice-phase time: {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
