"""Benchmark the history writers (issue 4), all figures measured in one run.

    uv run python -m bench.backfill --rows 2000000 [--merge-rows 100000] [--upsert-rows 2000]

Synthetic orders over 3 years, day-partitioned. Prints rows/s for: the raw ceiling (pyarrow
``write_dataset`` partitioned by day), the naive path (one big pyiceberg append), the Iceberg
overwrite writer (month-sized archive slices), the Iceberg merge writer vs pyiceberg
``Table.upsert``, the Lance writers, and the overwrite writers again under a concurrent live
appender (a separate process appending live micro-batches). Then the ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyiceberg.catalog.sql import SqlCatalog

from backfill.sinks.common import DEFAULT_RETRY
from backfill.sinks.iceberg.sink import IcebergSink
from backfill.sinks.lance.sink import LanceSink
from coordinator.core import lineage
from coordinator.core.values import (
    CommitToken,
    Epoch,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
    TimeBucket,
)
from stream.decode.base import add_lineage

START = datetime(2022, 1, 1, tzinfo=UTC)
DAYS = 3 * 365
USER = pa.schema(
    [
        pa.field("order_id", pa.int64(), nullable=False),
        pa.field("customer", pa.int64()),
        pa.field("amount", pa.float64()),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)


def orders(n: int, seed: int = 1, base: int = 0) -> pa.Table:
    """``n`` archive orders spread uniformly over 3 years, sorted by time."""
    rng = np.random.default_rng(seed)
    t0 = int(START.timestamp() * 1000)
    ts = np.sort(rng.integers(t0, t0 + DAYS * 86_400_000, n))
    user = pa.table(
        {
            "order_id": pa.array(np.arange(base, base + n), pa.int64()),
            "customer": pa.array(rng.integers(0, 100_000, n), pa.int64()),
            "amount": pa.array(np.round(rng.random(n) * 500, 2), pa.float64()),
            "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        },
        schema=USER,
    )
    return add_lineage(user, None, None, "archive", "backfill")


def rederived(data: pa.Table, b: TimeBucket, new: int, base: int) -> pa.Table:
    """A re-derived bucket: all of ``b``'s rows with every other amount changed, plus ``new``
    new orders (ids from ``base``) inside ``b``. Merging it and upserting it must give the same
    table: every other row stays, the bucket's rows are updated, the new ones inserted."""
    cur = in_bucket(data, b)
    flip = pa.array(np.arange(cur.num_rows) % 2 == 0)
    amount = pc.if_else(flip, pc.add(cur["amount"], 1.0), cur["amount"])
    cur = cur.set_column(cur.schema.get_field_index("amount"), "amount", amount)
    extra = orders(new, seed=9, base=base)
    span = int((b.end - b.start).total_seconds() * 1000)
    lo = int(b.start.timestamp() * 1000)
    ts = np.sort(np.random.default_rng(9).integers(lo, lo + span, new))
    i = extra.schema.get_field_index("ts")
    extra = extra.set_column(
        i, extra.schema.field(i), pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    )
    return pa.concat_tables([cur, extra]).combine_chunks()


def months() -> list[TimeBucket]:
    """Month buckets covering the 3 years."""
    out, cur = [], START
    while cur < START + timedelta(days=DAYS):
        nxt = (cur.replace(day=28) + timedelta(days=4)).replace(day=1)
        out.append(TimeBucket(cur, nxt))
        cur = nxt
    return out


def timed(label: str, rows: int, fn: Callable[[], Any]) -> float:
    """Run ``fn`` and print rows/s."""
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    print(f"{label:<44} {rows:>10,} rows {dt:8.2f} s {rows / dt:>12,.0f} rows/s", flush=True)
    return rows / dt


def check_rows(label: str, found: int, expected: int) -> None:
    """Refuse figures for work that was not done: the written rows must all be there."""
    if found != expected:
        raise SystemExit(f"{label}: expected {expected:,} rows, found {found:,}; figures invalid")
    print(f"{'':<4}verified: {found:,} rows in the output", flush=True)


def backfill_rows(sink: IcebergSink | LanceSink) -> int:
    """Rows the backfill side wrote (live rows of a concurrent appender left out)."""
    side = sink.scan(columns=[lineage.SIDE])[lineage.SIDE]
    return int(pc.sum(pc.equal(side, "backfill")).as_py() or 0)


def token(slice_id: str, side: str = "backfill", rng: OffsetRange | None = None) -> CommitToken:
    """A bench commit token."""
    return CommitToken(
        "bench",
        slice_id,
        1,
        Epoch(1),
        "live" if side == "live" else "backfill",
        (rng,) if rng else (),
    )


def catalog(root: Path) -> SqlCatalog:
    """A fresh SQL catalog under ``root``."""
    (root / "wh").mkdir(parents=True, exist_ok=True)
    return SqlCatalog("bench", uri=f"sqlite:///{root / 'cat.db'}", warehouse=(root / "wh").as_uri())


def in_bucket(data: pa.Table, b: TimeBucket) -> pa.Table:
    """Rows of ``data`` in bucket ``b`` (one contiguous chunk)."""
    ts = data["ts"].cast(pa.int64())
    lo, hi = int(b.start.timestamp() * 1000), int(b.end.timestamp() * 1000)
    return data.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))).combine_chunks()


def raw_ceiling(data: pa.Table, root: Path) -> None:
    """pyarrow write_dataset, partitioned by day."""
    day = pc.strftime(data["ts"], format="%Y-%m-%d")
    pads.write_dataset(
        data.append_column("day", day),
        root / "raw",
        format="parquet",
        partitioning=["day"],
        partitioning_flavor="hive",
        max_partitions=4096,
        existing_data_behavior="overwrite_or_ignore",
    )


def write_months(sink: IcebergSink | LanceSink, data: pa.Table) -> None:
    """One scoped overwrite (or merge) commit per month bucket."""
    for b in months():
        sink.write_slice(Scope("archive", bucket=b), in_bucket(data, b), token(f"m-{b.label()}"))


def live_appender(kind: str, target: str, stop: Any) -> None:
    """Child process: append 5,000-row live batches until ``stop`` is set."""
    sink: IcebergSink | LanceSink
    if kind == "iceberg":
        sink = IcebergSink(catalog(Path(target)), "bench.live", USER, "ts")
    else:
        sink = LanceSink(target, USER, "ts")
    off = 0
    while not stop.is_set():
        batch = orders(5_000, seed=off, base=10**9 + off)
        rng = OffsetRange(PartitionId(0), Offset(off), Offset(off + 5_000))
        live = add_lineage(
            batch.select(USER.names),
            pa.array([0] * 5_000, pa.int32()),
            pa.array(range(off, off + 5_000), pa.int64()),
            "kafka",
            "live",
        )
        sink.append_live(live, token(f"live-{off}", "live", rng))
        off += 5_000


def with_live(kind: str, target: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap ``fn`` so a live appender process runs while it does."""

    def run() -> None:
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        child = ctx.Process(target=live_appender, args=(kind, target, stop))
        child.start()
        time.sleep(3)  # let the child import and make its first commits
        try:
            fn()
        finally:
            stop.set()
            child.join(120)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--merge-rows", type=int, default=10_000, help="new keys in the merged month")
    p.add_argument("--upsert-rows", type=int, default=500, help="new keys in the upsert batch")
    p.add_argument("--no-live", action="store_true", help="skip the runs with a live appender")
    a = p.parse_args()
    warnings.filterwarnings("ignore", message="Delete operation did not match any records")
    data = orders(a.rows)
    root = Path(tempfile.mkdtemp(prefix="seamline-bench-"))
    print(f"bench root {root}; rows={a.rows:,} over {DAYS} days; month slices={len(months())}")
    f: dict[str, float] = {}
    f["raw"] = timed("raw ceiling: write_dataset by day", a.rows, lambda: raw_ceiling(data, root))
    check_rows("raw", pads.dataset(root / "raw", partitioning="hive").count_rows(), a.rows)
    naive = IcebergSink(catalog(root / "naive"), "bench.naive", USER, "ts")
    naive.ensure_table()
    naive_tbl = naive.catalog.load_table("bench.naive")
    data_us = data.cast(naive_tbl.schema().as_arrow())
    f["naive"] = timed(
        "naive: one big pyiceberg append",
        a.rows,
        lambda: naive_tbl.append(data_us),
    )
    check_rows("naive", naive.scan(columns=["order_id"]).num_rows, a.rows)
    ice = IcebergSink(catalog(root / "ice"), "bench.ice", USER, "ts")
    ice.ensure_table()
    f["ice_ow"] = timed(
        "iceberg overwrite writer (month slices)", a.rows, lambda: write_months(ice, data)
    )
    check_rows("iceberg overwrite", backfill_rows(ice), a.rows)
    merge = IcebergSink(ice.catalog, "bench.ice", USER, "ts", mode="merge", key=["order_id"])
    mb, ub = months()[6], months()[18]  # merge re-derives one month, upsert another
    upd = rederived(data, mb, a.merge_rows, base=a.rows)
    f["ice_merge"] = timed(
        f"iceberg merge writer (one month, {upd.num_rows:,})",
        upd.num_rows,
        lambda: merge.write_slice(Scope("archive", bucket=mb), upd, token("merge")),
    )
    check_rows("iceberg merge", backfill_rows(ice), a.rows + a.merge_rows)
    small = rederived(data, ub, a.upsert_rows, base=a.rows + a.merge_rows)
    small = small.slice(small.num_rows - 2 * a.upsert_rows)  # some updates + the new ones
    ice_tbl = ice.catalog.load_table("bench.ice")
    small_us = small.cast(ice_tbl.schema().as_arrow())
    f["upsert"] = timed(
        "pyiceberg Table.upsert (same kind of batch)",
        small.num_rows,
        lambda: ice_tbl.upsert(small_us, join_cols=["order_id"]),
    )
    check_rows("upsert", backfill_rows(ice), a.rows + a.merge_rows + a.upsert_rows)
    lan = LanceSink(str(root / "l.lance"), USER, "ts")
    lan.ensure_table()
    f["lance_ow"] = timed(
        "lance overwrite writer (month slices)", a.rows, lambda: write_months(lan, data)
    )
    check_rows("lance overwrite", backfill_rows(lan), a.rows)
    lmerge = LanceSink(lan.uri, USER, "ts", mode="merge", key=["order_id"], policy=DEFAULT_RETRY)
    f["lance_merge"] = timed(
        f"lance merge writer (one month, {upd.num_rows:,})",
        upd.num_rows,
        lambda: lmerge.write_slice(Scope("archive", bucket=mb), upd, token("merge")),
    )
    check_rows("lance merge", backfill_rows(lan), a.rows + a.merge_rows)
    if not a.no_live:
        ice2 = IcebergSink(catalog(root / "live"), "bench.live", USER, "ts")
        ice2.ensure_table()
        f["ice_live"] = timed(
            "iceberg overwrite + live appender",
            a.rows,
            with_live("iceberg", str(root / "live"), lambda: write_months(ice2, data)),
        )
        check_rows("iceberg overwrite + live", backfill_rows(ice2), a.rows)
        lan2 = LanceSink(str(root / "live.lance"), USER, "ts")
        lan2.ensure_table()
        f["lance_live"] = timed(
            "lance overwrite + live appender",
            a.rows,
            with_live("lance", lan2.uri, lambda: write_months(lan2, data)),
        )
        check_rows("lance overwrite + live", backfill_rows(lan2), a.rows)
    print("\nratios (same run)")
    print(f"  iceberg overwrite / raw ceiling     {f['ice_ow'] / f['raw']:6.2f}  (target >= 0.9)")
    print(f"  iceberg overwrite / naive append    {f['ice_ow'] / f['naive']:6.2f}")
    print(
        f"  iceberg merge / pyiceberg upsert    {f['ice_merge'] / f['upsert']:6.1f}  (target >= 50)"
    )
    print(f"  lance overwrite / raw ceiling       {f['lance_ow'] / f['raw']:6.2f}")
    print(f"  lance overwrite / naive append      {f['lance_ow'] / f['naive']:6.2f}")
    print(f"  lance merge / pyiceberg upsert      {f['lance_merge'] / f['upsert']:6.1f}")
    if not a.no_live:
        print(f"  iceberg overwrite+live / raw        {f['ice_live'] / f['raw']:6.2f}")
        print(f"  lance overwrite+live / raw          {f['lance_live'] / f['raw']:6.2f}")


if __name__ == "__main__":
    main()
