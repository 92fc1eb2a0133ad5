"""Benchmark merge mode (issue 13), all figures measured in one run.

    uv run python -m bench.merge [--rows 300000] [--reconcile-rows 1000000]

1. Throughput of history writes under a concurrent live writer, per format: the overwrite
   writer (month slices) while a live process appends 2,000-row batches, against the merge
   writer (month slices) while a live process MERGES 2,000-row batches (a quarter of them
   corrections of history keys). Rows/s of the history side, live commits made meanwhile
   (both sides progress) and the merge/overwrite ratio. The merged table is checked: one
   row per key.
2. Reconcile cost on a table of ``--reconcile-rows`` rows: what an overwrite reconcile reads
   (the table scan plus seamline's row checksum) against the same plus the merge proofs (the
   key index, key uniqueness and the superseded check of a 1 % sample of missing records).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backfill.sinks.iceberg.sink import IcebergSink
from backfill.sinks.lance.sink import LanceSink
from bench.backfill import USER, catalog, in_bucket, months, orders, token
from coordinator.core import lineage
from coordinator.core.values import Offset, OffsetRange, PartitionId, Scope
from reconcile.checksum import checksum
from reconcile.keys import check_unique, superseded_rows
from stream.decode.json_records import add_lineage

LIVE_BATCH = 2_000


def open_sink(kind: str, target: str, mode: str) -> IcebergSink | LanceSink:
    """The bench table in ``mode`` (merge on ``order_id``)."""
    key = ["order_id"]
    if kind == "iceberg":
        return IcebergSink(catalog(Path(target)), "bench.m", USER, "ts", mode=mode, key=key)  # type: ignore[arg-type]
    return LanceSink(target, USER, "ts", mode=mode, key=key)  # type: ignore[arg-type]


def live_writer(kind: str, target: str, mode: str, rows: int, stop: Any, commits: Any) -> None:
    """Child process: live batches until ``stop``; in merge mode a quarter are corrections of
    history keys (``0..rows``), the rest new keys."""
    sink = open_sink(kind, target, mode)
    off, rng = 0, np.random.default_rng(5)
    while not stop.is_set():
        batch = orders(LIVE_BATCH, seed=off, base=10**9 + off)
        if mode == "merge":
            ids = batch["order_id"].to_numpy().copy()
            ids[: LIVE_BATCH // 4] = rng.integers(0, rows, LIVE_BATCH // 4)
            batch = batch.set_column(0, "order_id", pa.array(ids, pa.int64()))
        part = OffsetRange(PartitionId(0), Offset(off), Offset(off + LIVE_BATCH))
        live = add_lineage(
            batch.select(USER.names),
            pa.array([0] * LIVE_BATCH, pa.int32()),
            pa.array(range(off, off + LIVE_BATCH), pa.int64()),
            "kafka",
            "live",
        )
        sink.append_live(live, token(f"live-{off}", "live", part))
        off += LIVE_BATCH
        with commits.get_lock():
            commits.value += 1


def history(kind: str, target: str, mode: str, data: pa.Table, buckets: int) -> tuple[float, int]:
    """Month slices in ``mode`` under a concurrent live writer: (rows/s, live commits)."""
    sink = open_sink(kind, target, mode)
    sink.ensure_table()
    ctx = multiprocessing.get_context("spawn")
    stop, commits = ctx.Event(), ctx.Value("i", 0)
    child = ctx.Process(target=live_writer, args=(kind, target, mode, data.num_rows, stop, commits))
    child.start()
    while commits.value < 2:  # the live writer is up and committing
        time.sleep(0.2)
    before = commits.value
    t = time.perf_counter()
    for b in months()[:buckets]:
        sink.write_slice(Scope("archive", bucket=b), in_bucket(data, b), token(f"m-{b.label()}"))
    dt = time.perf_counter() - t
    live = commits.value - before
    stop.set()
    child.join(120)
    rate = data.num_rows / dt
    print(f"{kind:<8} {mode:<9} {data.num_rows:>9,} rows {dt:7.2f} s {rate:>10,.0f} rows/s "
          f"live commits meanwhile {live}", flush=True)  # fmt: skip
    if mode == "merge":
        ids = sink.scan(columns=["order_id"])["order_id"]
        distinct = len(pc.unique(ids))
        if distinct != len(ids):
            raise SystemExit(
                f"{kind} merge: expected one row per key, found {len(ids) - distinct} extra"
            )
        print(f"{'':<4}verified: {len(ids):,} rows, one per key", flush=True)
    return rate, live


def reconcile_cost(n: int) -> None:
    """Overwrite reconcile work vs merge reconcile work on an ``n``-row table (in memory)."""
    table = orders(n, seed=3)
    cols = [c for c in table.column_names if c not in lineage.COLUMNS]
    t = time.perf_counter()
    checksum(table, cols)
    plain = time.perf_counter() - t
    t = time.perf_counter()
    checksum(table, cols)
    index = table.select(["order_id", "ts", *lineage.COLUMNS])
    check = check_unique(index, ["order_id"], merge=True)
    sample = index.take(pa.array(np.arange(0, n, 100)))
    superseded_rows(sample, index, ["order_id"])
    merged = time.perf_counter() - t
    assert check.ok
    print(f"reconcile {n:,} rows: overwrite checksum {plain:.2f} s, merge (checksum + key index "
          f"+ uniqueness + superseded) {merged:.2f} s, ratio {merged / plain:.2f}", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--reconcile-rows", type=int, default=1_000_000)
    p.add_argument("--formats", default="iceberg,lance")
    p.add_argument("--months", type=int, default=6, help="month slices written (of 36)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    data = pa.concat_tables([in_bucket(orders(args.rows * 36 // args.months, seed=1), b)
                             for b in months()[: args.months]]).combine_chunks()  # fmt: skip
    for kind in args.formats.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            over, _ = history(
                kind,
                str(Path(tmp) / "o" / "t.lance" if kind == "lance" else Path(tmp) / "o"),
                "overwrite",
                data,
                args.months,
            )
            merged, _ = history(
                kind,
                str(Path(tmp) / "m" / "t.lance" if kind == "lance" else Path(tmp) / "m"),
                "merge",
                data,
                args.months,
            )
            print(f"{kind}: merge / overwrite = {merged / over:.2f} (target >= 0.5)", flush=True)
    reconcile_cost(args.reconcile_rows)


if __name__ == "__main__":
    main()
