"""Benchmark of custom-key discovery (``[history.archive] slice_by`` without ``values``):
time is measured and printed, never asserted.

Two archives of the same rows (``--files`` monthly-ish Parquet files, ``--rows`` rows each,
``--tenants`` tenants): one written a file per tenant (every row group holds one value, so
the footer statistics answer without reading data), one with every tenant mixed in every
file (a polars distinct scan of the key column). For each: the discovery time over all files
(best of ``--repeat``, wall seconds), per file, and the plan built from the found keys
(slices, and how many files the average slice needs: the pruning per-tenant files buy).

Usage: ``uv run python bench/slice_keys.py [--files 48] [--rows 200000] [--tenants 16]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.core.values import Cut, Epoch
from coordinator.plan.facts import file_keys
from coordinator.plan.planner import ArchiveFile, make_plan

T0 = datetime(2022, 1, 1, tzinfo=UTC)


def _write(folder: Path, files: int, rows: int, tenants: int, per_tenant: bool) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = []
    for i in range(files):
        month = T0 + timedelta(days=31 * (i // (tenants if per_tenant else 1)))
        ids = (np.full(rows, i % tenants) if per_tenant
               else rng.integers(0, tenants, size=rows))  # fmt: skip
        ts = int(month.timestamp() * 1000) + rng.integers(0, 28 * 86_400_000, size=rows)
        table = pa.table(
            {
                "tenant": pa.array([f"tenant-{t:03d}" for t in ids]),
                "amount": rng.random(rows),
                "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            }
        )
        path = folder / f"part-{i:04d}.parquet"
        pq.write_table(table, path, row_group_size=64_000)
        out.append(path)
    return out


def _case(name: str, paths: list[Path], repeat: int) -> None:
    best, found = float("inf"), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        found = [file_keys(p, "parquet", "tenant", str) for p in paths]
        best = min(best, time.perf_counter() - t0)
    files = []
    for p, keys in zip(paths, found, strict=True):
        span = pc.min_max(pq.read_table(p, columns=["ts"])["ts"]).as_py()
        files.append(ArchiveFile(str(p), span["min"], span["max"], 1, p.stat().st_size, keys))
    cut = Cut("bench", "t", (), datetime.now(UTC), Epoch(1))
    plan = make_plan(cut, 1000, files, "month", include_kafka=False, key_column="tenant")
    plain = make_plan(cut, 1000, files, "month", include_kafka=False)
    per_slice = sum(len(s.files) for s in plan.slices) / max(1, len(plan.slices))
    per_bucket = sum(len(s.files) for s in plain.slices) / max(1, len(plain.slices))
    print(f"{name:11s} discovery {best:7.3f} s  ({best / len(paths) * 1000:6.1f} ms/file)  "
          f"{len(plan.slices):4d} tenant x month slices reading {per_slice:4.1f} files each "
          f"(a month bucket alone: {per_bucket:4.1f} files)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=48)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--tenants", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per = _write(root / "per-tenant", args.files, args.rows, args.tenants, True)
        mixed = _write(root / "mixed", args.files, args.rows, args.tenants, False)
        rows = args.files * args.rows
        print(f"{args.files} files x {args.rows:,} rows ({rows:,}), {args.tenants} tenants")
        _case("per-tenant", per, args.repeat)  # footer statistics, no data read
        _case("mixed", mixed, args.repeat)  # polars distinct scan of the key column


if __name__ == "__main__":
    main()
