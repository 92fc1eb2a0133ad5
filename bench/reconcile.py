"""Benchmark of the reconciler's table side on a real Iceberg table, in one run:

* raw Arrow scan: pyiceberg's batch reader over every column (the ceiling for any reader);
* one-pass reconcile (:func:`reconcile.tablepass.table_pass`): the same scan, every row hashed
  (scheme seamline-row-v1) and grouped by slice with polars;
* DuckDB over the table's own Parquet data files: ``count(*), sum(hash(...))`` grouped by
  partition and slice;
* the per-slice path: one filtered scan plus a checksum per slice (what reconcile did before).

N order-like Kafka rows (lineage columns included) over P partitions are appended to an
unpartitioned Iceberg table (SQL catalog on SQLite); slices are ``--slice`` offsets of one
partition. Each measurement is the best of three, interleaved (the machine is shared); the
one-pass checksums are checked equal to the per-slice ones and the row counts to DuckDB's.

Usage: ``uv run python bench/reconcile.py [--rows 2000000] [--partitions 6] [--slice 50000]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backfill.sinks.scopes import iceberg_scope  # noqa: E402
from coordinator.core.values import Offset, OffsetRange, PartitionId, Scope  # noqa: E402
from reconcile.checksum import checksum  # noqa: E402
from reconcile.tablepass import PassPlan, TablePass, table_pass  # noqa: E402

CHUNK = 500_000
NAMES = np.array([f"customer-{i:05d}" for i in range(5000)], dtype=object)


def _chunk(start: int, n: int, parts: int, rng: np.random.Generator) -> pa.Table:
    ids = np.arange(start, start + n, dtype=np.int64)
    qty = pa.array(rng.integers(1, 100, n), mask=rng.random(n) < 0.05)
    ts = 1_600_000_000_000_000 + ids * 9_000_000
    return pa.table(
        {
            "id": ids,
            "customer": pa.array(NAMES[rng.integers(0, len(NAMES), n)], pa.string()),
            "price": rng.random(n) * 1000,
            "qty": qty,
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "_kafka_partition": pa.array(ids % parts, pa.int32()),
            "_kafka_offset": ids // parts,
            "_seamline_source": pa.array(["kafka"] * n, pa.string()),
            "_seamline_side": pa.array(["backfill"] * n, pa.string()),
        }
    )


def build_table(root: Path, rows: int, parts: int) -> Any:
    """A fresh Iceberg table of ``rows`` rows, appended in 500 k-row commits."""
    from pyiceberg.catalog.sql import SqlCatalog

    shutil.rmtree(root, ignore_errors=True)
    (root / "wh").mkdir(parents=True)
    cat = SqlCatalog("bench", uri=f"sqlite:///{root}/cat.db", warehouse=f"file://{root}/wh")
    cat.create_namespace("b")
    rng = np.random.default_rng(7)
    table = None
    for start in range(0, rows, CHUNK):
        data = _chunk(start, min(CHUNK, rows - start), parts, rng)
        table = table or cat.create_table("b.orders", schema=data.schema)
        table.append(data)
    return cat.load_table("b.orders")


class Reader:
    """The table ports the reconciler uses (scan, scan_batches) over a pyiceberg table."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def scan(self, scope: Scope | None = None, columns: list[str] | None = None) -> pa.Table:
        expr = iceberg_scope(scope, "ts") if scope is not None else None
        scan = self.table.scan(row_filter=expr) if expr is not None else self.table.scan()
        out: pa.Table = scan.to_arrow()
        return out

    def scan_batches(self) -> Iterator[pa.RecordBatch]:
        yield from self.table.scan().to_arrow_batch_reader()


def units(rows: int, parts: int, width: int) -> list[OffsetRange]:
    per = -(-rows // parts)
    return [
        OffsetRange(PartitionId(p), Offset(a), Offset(min(a + width, per)))
        for p in range(parts)
        for a in range(0, per, width)
    ]


def raw_scan(reader: Reader) -> tuple[int, float]:
    t0, n = time.perf_counter(), 0
    for batch in reader.scan_batches():
        n += batch.num_rows
    return n, time.perf_counter() - t0


def one_pass(reader: Reader, plan: PassPlan) -> tuple[TablePass, float]:
    t0 = time.perf_counter()
    tp = table_pass(reader, plan)
    return tp, time.perf_counter() - t0


def duckdb_grouped(table: Any, width: int) -> tuple[dict[tuple[int, int], int], float]:
    import duckdb

    files = [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]
    cols = "id, customer, price, qty, ts, _kafka_partition, _kafka_offset, _seamline_source"
    t0 = time.perf_counter()
    con = duckdb.connect()
    rows = con.execute(
        f"select _kafka_partition, _kafka_offset // {int(width)}, count(*), sum(hash({cols})) "
        "from read_parquet(?) group by 1, 2",
        [files],
    ).fetchall()
    secs = time.perf_counter() - t0
    return {(int(p), int(k)): int(n) for p, k, n, _ in rows}, secs


def per_slice(reader: Reader, ranges: list[OffsetRange]) -> tuple[list[Any], float]:
    t0 = time.perf_counter()
    out = [checksum(reader.scan(Scope("kafka", (r,)))) for r in ranges]
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--slice", type=int, default=50_000, help="offsets per slice")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/seamline-bench-reconcile"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    table = build_table(args.dir, args.rows, args.partitions)
    print(f"table: {args.rows:,} rows, {args.partitions} partitions, Iceberg "
          f"({time.perf_counter() - t0:.1f} s to write)")  # fmt: skip
    ranges = units(args.rows, args.partitions, args.slice)
    plan = PassPlan(
        {p: [(r.start, r.end, i) for i, r in enumerate(ranges) if r.partition == p]
         for p in range(args.partitions)},
        [], {}, "ts",
    )  # fmt: skip
    reader = Reader(table)
    raw, fast, duck = [], [], []
    for _ in range(3):
        n, secs = raw_scan(reader)
        raw.append(secs)
        tp, secs = one_pass(reader, plan)
        fast.append(secs)
        counts, secs = duckdb_grouped(table, args.slice)
        duck.append(secs)
    slow, slow_s = per_slice(reader, ranges)
    assert [tp.checksums[i] for i in range(len(ranges))] == slow, "one pass != per slice"
    keyed = {(int(r.partition), int(r.start) // args.slice): i for i, r in enumerate(ranges)}
    assert all(tp.checksums[keyed[k]].rows == v for k, v in counts.items()) and n == args.rows
    raw_s, fast_s, duck_s = min(raw), min(fast), min(duck)
    print(f"slices: {len(ranges):,} of {args.slice:,} offsets")
    for label, secs in (("raw Arrow scan (every column)", raw_s),
                        ("one-pass reconcile (scan+hash+group)", fast_s),
                        ("DuckDB count+sum(hash) group by slice", duck_s),
                        ("per-slice scans + checksums (old)", slow_s)):  # fmt: skip
        print(f"{label:40s} {secs:7.2f} s {n / secs / 1e6:7.2f} M rows/s")
    print(f"one-pass / raw scan (rows/s): {raw_s / fast_s:.2f}x")
    print(f"one-pass / DuckDB   (rows/s): {duck_s / fast_s:.2f}x")
    print(f"one-pass / per-slice:         {slow_s / fast_s:.2f}x faster")


if __name__ == "__main__":
    main()
