"""The whole ``seamline run`` end to end (issue 16), all figures measured in one run.

    uv run python -m bench.e2e [--archive-rows 10000000] [--kafka-records 1000000]
                               [--formats iceberg,lance] [--executors process,ray]
                               [--committers worker,coordinator]

Per table format and executor, on a real broker (``KAFKA_BOOTSTRAP``, else a local broker
started under the work dir and stopped at the end): the demo's job (monthly Parquet archive
over the older part of three years, the newest year in a 3-partition topic, the demo's
transform), ``seamline cut``, then ``seamline live`` with a producer writing live orders at
``--live-rate`` per second. The live lag is sampled for ``--baseline-s`` seconds with no
backfill (the baseline), then during ``seamline run``. Printed per case:

* archive rows/s and Kafka records/s of history: rows of that kind over the wall time from
  its first slice start to its last slice end (from the state store's slice records);
* the raw ceilings measured in the same run: pyarrow ``write_dataset`` of the same archive
  rows partitioned by day, and a plain ``read_committed`` consumer reading the topic's history
  (no decoding); and the ratios against them;
* live lag (largest partition) during the backfill against its baseline: max and mean;
* per-slice overhead per kind: the mean over its slices of (slice duration - the slice's rows
  at the raw rate of its kind), i.e. what a slice costs beyond moving its rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from backfill.sinks import open_sink
from bench.backfill import raw_ceiling
from coordinator.core.jobspec import load_job
from coordinator.demo.data import DemoWindow, orders, write_archive
from coordinator.demo.job import (
    PARTITIONS,
    _produce_all,
    new_topic_name,
    prepare_workdir,
    render_job,
)
from coordinator.demo.live import LagWatch, LiveProcess, LiveProducer, lag_probe, seamline_command
from coordinator.state.store import StateStore
from stream.broker.admin import create_topic
from stream.kafka import client


def raw_consume(bootstrap: str, topic: str, expected: int) -> float:
    """Records/s of a plain read_committed consumer reading ``expected`` records (no decode)."""
    consumer = client.consumer(client.plain(bootstrap),
                               extras={"isolation.level": "read_committed"})  # fmt: skip
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    got, t = 0, time.perf_counter()
    try:
        while got < expected and time.perf_counter() - t < 300:
            got += sum(1 for m in consumer.consume(10_000, 1.0) if m.error() is None)
    finally:
        consumer.close()
    return got / (time.perf_counter() - t)


def seed(root: Path, bootstrap: str, topic: str, archive_n: int, kafka_n: int,
         window: DemoWindow) -> pa.Table:  # fmt: skip
    """The archive (monthly Parquet under ``root/archive``) and the topic's history."""
    archive = orders(0, archive_n, window.start, window.archive_end, seed=7)
    write_archive(archive, root / "archive")
    _produce_all(bootstrap, topic, orders(archive_n, kafka_n, window.archive_end,
                                          window.end, seed=8))  # fmt: skip
    return archive


def slice_figures(job_file: Path, raw: dict[str, float]) -> dict[str, Any]:
    """Per kind: slices, rows, wall span from first start to last end, rows/s, and the
    per-slice overhead: the mean of (slice duration - its rows at the kind's raw rate).

    A slice ends when its commit is in the table: with ``committer = "coordinator"`` that is
    its batch's commit time (read from the table), not the end of its staging."""
    job = load_job(job_file)
    with StateStore(job.state_url()) as store:
        recs = [r for r in store.iter_slices(job.job_id) if r.started_at and r.finished_at]
    batches = {c.token.slice_id: c.committed_at for c in open_sink(job).commits()}  # type: ignore[attr-defined]
    recs = [replace(r, finished_at=max(r.finished_at, batches[str(r.staged["batch"])]))
            if r.staged and r.staged.get("batch") in batches and r.finished_at else r
            for r in recs]  # fmt: skip
    out: dict[str, Any] = {}
    for kind in ("archive", "kafka"):
        mine = [r for r in recs if r.slice.scope.source == kind]
        if not mine:
            continue
        rows = sum(r.rows or 0 for r in mine)
        span = (max(r.finished_at for r in mine if r.finished_at)
                - min(r.started_at for r in mine if r.started_at)).total_seconds()  # fmt: skip
        beyond = [(r.duration_s or 0.0) - (r.rows or 0) / raw[kind] for r in mine]
        out[kind] = {"slices": len(mine), "rows": rows, "span_s": span,
                     "rows_per_s": rows / span if span > 0 else float("nan"),
                     "overhead_ms": 1000 * float(np.mean(beyond))}  # fmt: skip
    return out


def lag_stats(samples: list[tuple[datetime, int]], since: datetime,
              until: datetime) -> dict[str, float]:  # fmt: skip
    window = [v for t, v in samples if since <= t <= until]
    return {"max": float(max(window, default=0)),
            "mean": float(np.mean(window)) if window else 0.0}  # fmt: skip


def run_case(root: Path, bootstrap: str, fmt: str, executor: str, committer: str,
             args: Any) -> dict[str, Any]:  # fmt: skip
    paths = prepare_workdir(root / f"{fmt}-{executor}-{committer}")
    topic = new_topic_name()
    create_topic(bootstrap, topic, partitions=PARTITIONS, config={"retention.ms": "-1"})
    window = DemoWindow.three_years(datetime.now(UTC), topic_days=365)
    archive = seed(paths.root, bootstrap, topic, args.archive_rows, args.kafka_records, window)
    t = time.perf_counter()
    raw_ceiling(archive, paths.root / "ceiling")
    raw_write = archive.num_rows / (time.perf_counter() - t)
    raw_read = raw_consume(bootstrap, topic, args.kafka_records)
    text = render_job(fmt, paths, bootstrap, topic)  # type: ignore[arg-type]
    text = text.replace("[backfill]\n", f'[backfill]\nexecutor = "{executor}"\n')
    text = re.sub(r'(?m)^committer = "\w+"', f'committer = "{committer}"', text)
    assert f'committer = "{committer}"' in text, "the demo job names its committer"
    paths.job.write_text(text)
    subprocess.run(seamline_command("cut", str(paths.job)), check=True, capture_output=True)
    job = load_job(paths.job)
    with StateStore(job.state_url()) as store:
        cut = store.get_cut(job.job_id)
    assert cut is not None
    live = LiveProcess(paths.job, paths.live_log)
    producer = LiveProducer(bootstrap, topic, 10**9, window, rate=args.live_rate)
    watch = LagWatch(lag_probe(job, {p.partition: p.hwm for p in cut.partitions}), every_s=0.5)
    live.start()
    producer.start()
    watch.start()
    try:
        time.sleep(args.baseline_s)
        began = datetime.now(UTC)
        t = time.perf_counter()
        done = subprocess.run(seamline_command("run", str(paths.job), "--output", "json"),
                              capture_output=True, text=True, check=False)  # fmt: skip
        wall = time.perf_counter() - t
        ended = datetime.now(UTC)
        live.check_running()
    finally:
        producer.stop()
        watch.stop()
        live.stop()
    report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    figures = slice_figures(paths.job, {"archive": raw_write, "kafka": raw_read})
    return {
        "format": fmt, "executor": executor, "committer": committer, "exit": done.returncode,
        "reconciled": report.get("reconciled"), "wall_s": wall,
        "raw_write_rows_per_s": raw_write, "raw_read_records_per_s": raw_read,
        "baseline_lag": lag_stats(watch.samples, began.replace(year=began.year - 1), began),
        "backfill_lag": lag_stats(watch.samples, began, ended), **figures,
    }  # fmt: skip


def show(case: dict[str, Any]) -> None:
    arch, kafka = case.get("archive", {}), case.get("kafka", {})
    a_rate, k_rate = arch.get("rows_per_s", 0.0), kafka.get("rows_per_s", 0.0)
    base, during = case["baseline_lag"], case["backfill_lag"]
    print(f"{case['format']:<8} {case['executor']:<8} committer={case['committer']} "
          f"exit={case['exit']} "
          f"reconciled={case['reconciled']} wall {case['wall_s']:.1f} s", flush=True)  # fmt: skip
    print(f"  archive {arch.get('rows', 0):>10,} rows {a_rate:>11,.0f} rows/s   raw write "
          f"{case['raw_write_rows_per_s']:>11,.0f} rows/s   ratio "
          f"{a_rate / case['raw_write_rows_per_s']:.2f} (target >= 0.9, >= 0.7 under live)")
    print(f"  kafka   {kafka.get('rows', 0):>10,} rows {k_rate:>11,.0f} rec/s    raw read  "
          f"{case['raw_read_records_per_s']:>11,.0f} rec/s    ratio "
          f"{k_rate / max(case['raw_read_records_per_s'], 1.0):.2f}")
    ratio = during["max"] / base["max"] if base["max"] else float("inf")
    print(f"  live lag (largest partition): baseline max {base['max']:.0f} mean "
          f"{base['mean']:.0f}; during backfill max {during['max']:.0f} mean "
          f"{during['mean']:.0f}; max ratio {ratio:.2f} (target <= 2)")
    print(f"  per-slice overhead beyond the raw rate: archive "
          f"{arch.get('overhead_ms', 0.0):.0f} ms over {arch.get('slices', 0)} slices, kafka "
          f"{kafka.get('overhead_ms', 0.0):.0f} ms over {kafka.get('slices', 0)} slices",
          flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive-rows", type=int, default=10_000_000)
    p.add_argument("--kafka-records", type=int, default=1_000_000)
    p.add_argument("--formats", default="iceberg,lance")
    p.add_argument("--executors", default="process,ray")
    p.add_argument("--committers", default="worker,coordinator",
                   help="[backfill] committer values to run (the demo job uses coordinator)")
    p.add_argument("--live-rate", type=float, default=500.0, help="live records per second")
    p.add_argument("--baseline-s", type=float, default=20.0)
    p.add_argument("--json", type=Path, help="also write every case's figures here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="seamline-e2e-") as tmp:
        root = Path(tmp)
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        own = None
        if not bootstrap:
            from stream.broker.local import start_local

            own = root / "broker"
            bootstrap = start_local(own).bootstrap
        cases = []
        try:
            for fmt in args.formats.split(","):
                for executor in args.executors.split(","):
                    for committer in args.committers.split(","):
                        case = run_case(root, bootstrap, fmt, executor, committer, args)
                        show(case)
                        cases.append(case)
        finally:
            if own is not None:
                from stream.broker.local import stop_local

                stop_local(own)
        if args.json:
            args.json.write_text(json.dumps(cases, indent=2, default=str))


if __name__ == "__main__":
    main()
