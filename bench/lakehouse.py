"""Live-commit cost per catalog and storage: SQL on local files, SQL on S3, REST on S3.

Starts a local S3 server and REST catalog (``seamline s3`` / ``seamline catalog``; Java and
Maven needed) in a temp dir, writes one history slice of ``--rows`` rows over ``--days`` day
partitions to a fresh Iceberg table on each, then times ``--commits`` live appends of
``--batch`` rows each (the live consumer's commit path, with its offset check). Prints the
median and p90 seconds per live commit and the ratio to the local SQL table.

    uv run python -m bench.lakehouse --commits 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from backfill.sinks import open_sink
from backfill.sinks.iceberg.rest_server.local import start_catalog, stop_catalog
from backfill.sinks.s3_server.local import create_bucket, start_s3, stop_s3
from coordinator.core.values import Scope
from tests.contract.backfill_writers import Rows, make_job, token


def _time_live(job: Any, rows: int, days: int, commits: int, batch: int) -> list[float]:
    sink = open_sink(job, min_age_s=0.0)
    sink.ensure_live()
    per_day = max(rows // days, 1)
    hist = [Rows(base=d * per_day, partition=0, start=d * per_day, count=per_day, day=d)
            for d in range(days)]  # fmt: skip
    for i, h in enumerate(hist):
        sink.write_slice(Scope("kafka", ranges=(h.range,)), h.table("backfill"),
                         token(f"k{i}", h.range))  # fmt: skip
    took = []
    for c in range(commits):
        r = Rows(base=10_000_000 + c * batch, partition=1, start=c * batch, count=batch, day=days)
        t0 = time.perf_counter()
        sink.append_live(r.table("live"), token(f"live:{c}", r.range, "live"))
        took.append(time.perf_counter() - t0)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--commits", type=int, default=20)
    ap.add_argument("--batch", type=int, default=400)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="seamline-lakehouse-") as tmp:
        root = Path(tmp)
        s3 = start_s3(root / "s3")
        try:
            bucket = create_bucket(s3, "bench-rest")
            rest = start_catalog(root / "rest", warehouse=f"{bucket}/warehouse",
                                 properties=s3.iceberg_properties())  # fmt: skip
            try:
                results: dict[str, list[float]] = {}
                for where in ("iceberg-overwrite", "iceberg-overwrite@s3",
                              "iceberg-overwrite@rest"):  # fmt: skip
                    sub = root / uuid.uuid4().hex[:8]
                    sub.mkdir()
                    job = make_job(where, sub, "127.0.0.1:1", "bench", rest=rest, s3=s3)
                    results[where] = _time_live(job, args.rows, args.days, args.commits,
                                                args.batch)  # fmt: skip
            finally:
                stop_catalog(root / "rest")
        finally:
            stop_s3(root / "s3")
    base = statistics.median(results["iceberg-overwrite"])
    for where, took in results.items():
        med = statistics.median(took)
        p90 = sorted(took)[int(0.9 * (len(took) - 1))]
        print(f"{where:28s} live commit median {med:6.3f}s p90 {p90:6.3f}s "
              f"x{med / base:5.1f} vs local SQL")


if __name__ == "__main__":
    main()
