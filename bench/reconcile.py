"""Benchmark of the reconciler's checksum path against a raw Arrow scan and DuckDB.

Writes N order-like rows (with lineage columns) to a Parquet file, then in one run measures:

* raw Arrow scan: ``pyarrow.parquet`` reading every column batch by batch;
* seamline checksum (scheme seamline-row-v1) of the same batches, for both sides of a slice
  (source and table: the file is checksummed twice, as the reconciler does);
* DuckDB ``count(*), sum(hash(...))`` over the same Parquet;
* peak memory (ru_maxrss of a fresh child process) of the streaming checksum at N/4 and N rows,
  to show memory does not grow with rows.

Usage: ``uv run python bench/reconcile.py [--rows 10000000] [--dir /tmp/seamline-bench]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconcile.checksum import Checksum, ChecksumAccumulator  # noqa: E402

CHUNK = 1_000_000
BATCH = 262_144
NAMES = np.array([f"customer-{i:05d}" for i in range(5000)], dtype=object)


def _chunk(start: int, n: int, rng: np.random.Generator) -> pa.Table:
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
            "_kafka_partition": pa.array(ids % 6, pa.int32()),
            "_kafka_offset": ids // 6,
            "_seamline_source": pa.array(["kafka"] * n, pa.string()),
            "_seamline_side": pa.array(["backfill"] * n, pa.string()),
        }
    )


def write_parquet(path: Path, rows: int) -> None:
    """Write ``rows`` rows in 1 M-row chunks (memory bounded)."""
    rng = np.random.default_rng(7)
    writer = None
    for start in range(0, rows, CHUNK):
        t = _chunk(start, min(CHUNK, rows - start), rng)
        writer = writer or pq.ParquetWriter(path, t.schema)
        writer.write_table(t, row_group_size=CHUNK)
    assert writer is not None
    writer.close()


def raw_scan(path: Path) -> tuple[int, float]:
    """Rows and seconds of reading every column."""
    t0, n = time.perf_counter(), 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
        n += batch.num_rows
    return n, time.perf_counter() - t0


def checksum_scan(path: Path) -> tuple[Checksum, float]:
    """Streaming checksum of the file and its seconds."""
    t0 = time.perf_counter()
    acc = ChecksumAccumulator()
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
        acc.update(batch)
    return acc.value, time.perf_counter() - t0


def duckdb_scan(path: Path) -> tuple[int, float]:
    """DuckDB count(*) and sum(hash(all columns)) over the Parquet file."""
    import duckdb

    cols = "id, customer, price, qty, ts, _kafka_partition, _kafka_offset, _seamline_source"
    t0 = time.perf_counter()
    con = duckdb.connect()
    row = con.execute(f"select count(*), sum(hash({cols})) from read_parquet('{path}')").fetchone()
    assert row is not None
    return int(row[0]), time.perf_counter() - t0


def child(path: Path) -> None:
    """Checksum ``path`` in this fresh process and print rows, seconds and peak RSS."""
    value, secs = checksum_scan(path)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": value.rows, "seconds": secs, "peak_mb": peak_kb / 1024}))


def peak_of(path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path)], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/seamline-bench"))
    ap.add_argument("--child", type=Path)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    big, small = (
        args.dir / f"orders-{args.rows}.parquet",
        args.dir / f"orders-{args.rows // 4}.parquet",
    )
    for path, n in ((big, args.rows), (small, args.rows // 4)):
        if not path.exists():
            write_parquet(path, n)
    raw, src, duck = [], [], []
    for _ in range(3):  # interleaved, best of three: the machine is shared
        n, secs = raw_scan(big)
        raw.append(secs)
        value, secs = checksum_scan(big)
        src.append(secs)
        duck_n, secs = duckdb_scan(big)
        duck.append(secs)
    tab, tab_s = checksum_scan(big)  # the other side of the slice
    assert value == tab and value.rows == n == duck_n
    raw_s, side_s, duck_s = min(raw), min(src), min(duck)
    print(f"rows per side: {n:,} ({big.stat().st_size / 1e6:.0f} MB Parquet, 9 columns)")
    print(f"raw Arrow scan (read every column): {raw_s:6.2f} s {n / raw_s / 1e6:6.2f} M rows/s")
    print(f"seamline scan + checksum, one side: {side_s:6.2f} s {n / side_s / 1e6:6.2f} M rows/s")
    print(f"both sides (source + table):        {side_s + tab_s:6.2f} s")
    print(f"DuckDB count(*), sum(hash(...)):    {duck_s:6.2f} s {n / duck_s / 1e6:6.2f} M rows/s")
    print(f"ratio checksum / raw scan (rows/s): {raw_s / side_s:.2f}")
    print(f"ratio checksum / DuckDB   (rows/s): {duck_s / side_s:.2f}")
    small_peak, big_peak = peak_of(small), peak_of(big)
    print(
        f"peak RSS of a checksum process: {small_peak['peak_mb']:.0f} MB at "
        f"{small_peak['rows']:,.0f} rows, {big_peak['peak_mb']:.0f} MB at {big_peak['rows']:,.0f} rows "
        f"(ratio {big_peak['peak_mb'] / small_peak['peak_mb']:.2f} for 4x rows)"
    )
    print(f"checksum: {value.to_json()}")


if __name__ == "__main__":
    main()
