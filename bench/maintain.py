"""Reconcile cost of a table fed by many small live commits, before and after ``maintain``.

    uv run python -m bench.maintain [--commits 1000] [--rows-per-commit 26] [--width 1000]

For Iceberg (SQL catalog) and Lance, in one run: a table receives ``--commits`` live commits
(the live writer's real conditional append, 3 Kafka partitions, rows over 3 days), and the same
rows are written to a second table in ONE commit. The reconciler's table-side work is then
timed on each: for every partition, the table is scanned unit by unit (``--width`` offsets per
unit, as ``reconcile.run.plan_units`` chunks live ranges) and each unit checksummed with the
``seamline-row-v1`` scheme, plus one full scan of the lineage columns (offset coverage). The
many-commit table is timed before and after ``maintain_table()`` (compaction + expiry); the
ratio to the one-commit table is what issue 15 asks to fall within 2x. Row checksums of all
three tables are asserted equal.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backfill.sinks import open_sink  # noqa: E402
from coordinator.core import lineage  # noqa: E402
from coordinator.core.jobspec import JobSpec, parse_job  # noqa: E402
from coordinator.core.values import (  # noqa: E402
    CommitToken,
    Epoch,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
)
from reconcile.checksum import Checksum, checksum  # noqa: E402
from stream.decode.base import add_lineage  # noqa: E402

PARTITIONS = 3
DAY_MS = 86_400_000
T0_MS = 1_735_689_600_000  # 2025-01-01


def make_job(fmt: str, root: Path, every: int = 0) -> JobSpec:
    """A day-partitioned orders table of format ``fmt`` under ``root``; ``every``: automatic
    maintenance every N commits (0: off)."""
    table: dict[str, Any] = {"format": fmt, "partition_by": "day"}
    if fmt == "iceberg":
        (root / "warehouse").mkdir(parents=True, exist_ok=True)
        table |= {
            "identifier": "bench.orders",
            "catalog_uri": f"sqlite:///{root / 'catalog.db'}",
            "warehouse": (root / "warehouse").as_uri(),
        }
    else:
        table |= {"uri": str(root / "orders.lance")}
    doc = {
        "job": {"id": "bench"},
        "stream": {"bootstrap": "127.0.0.1:1", "topic": "bench"},
        "schema": {
            "fields": {"order_id": "int64", "amount": "float64", "ts": "timestamp_ms"},
            "required": ["order_id"],
            "event_time": "ts",
        },
        "table": table,
        # automatic maintenance off by default: the point is the table before maintain
        "live": {"expire_snapshots_every": every},
    }
    return parse_job(doc, base_dir=root, default_id="bench")


def batch(i: int, n: int, next_offset: list[int]) -> tuple[pa.Table, CommitToken]:
    """Live commit ``i``: ``n`` rows on partition ``i % 3`` at its next offsets."""
    p = i % PARTITIONS
    start = next_offset[p]
    next_offset[p] += n
    ids = [i * n + k for k in range(n)]
    user = pa.table(
        {
            "order_id": pa.array(ids, pa.int64()),
            "amount": pa.array([1.25 * x for x in ids], pa.float64()),
            "ts": pa.array([T0_MS + (x % 3) * DAY_MS + x for x in ids], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
        }
    )
    parts = pa.array([p] * n, pa.int32())
    offs = pa.array(range(start, start + n), pa.int64())
    rows = add_lineage(user, parts, offs, "kafka", "live")
    rng = OffsetRange(PartitionId(p), Offset(start), Offset(start + n))
    token = CommitToken("bench", f"live-{i}", 1, Epoch(1), "live", (rng,))
    return rows, token


def fill(job: JobSpec, commits: int, per: int, one_commit: bool) -> None:
    """``commits`` live commits, or their rows concatenated into one per partition."""
    sink = open_sink(job, min_age_s=0.0)
    sink.ensure_live()
    next_offset = [0] * PARTITIONS
    batches = [batch(i, per, next_offset) for i in range(commits)]
    if not one_commit:
        for rows, token in batches:
            sink.append_live(rows, token)
        return
    for p in range(PARTITIONS):
        mine = [(r, t) for r, t in batches if t.ranges[0].partition == p]
        rows = pa.concat_tables([r for r, _ in mine])
        end = mine[-1][1].ranges[0].end
        rng = OffsetRange(PartitionId(p), Offset(0), end)
        sink.append_live(rows, CommitToken("bench", f"all-{p}", 1, Epoch(1), "live", (rng,)))


def reconcile_side(job: JobSpec, width: int, ends: list[int]) -> tuple[float, Checksum]:
    """Seconds for the reconciler's table-side reads and checksums; the combined checksum."""
    sink = open_sink(job, min_age_s=0.0)
    started = time.perf_counter()
    total = Checksum()
    for p in range(PARTITIONS):
        for a in range(0, ends[p], width):
            rng = OffsetRange(PartitionId(p), Offset(a), Offset(min(a + width, ends[p])))
            rows = sink.scan(Scope("kafka", ranges=(rng,)))
            cols = sorted(c for c in rows.column_names if not c.startswith("_seamline"))
            total = total + checksum(rows, cols)
    sink.scan(columns=[lineage.PARTITION, lineage.OFFSET])  # coverage reads every offset
    return time.perf_counter() - started, total


def run_format(fmt: str, commits: int, per: int, width: int) -> dict[str, Any]:
    """Fill both tables of ``fmt``, time reconcile before/after maintain; the figures."""
    with tempfile.TemporaryDirectory(prefix=f"seamline-maint-{fmt}-") as tmp:
        many, one = make_job(fmt, Path(tmp) / "many"), make_job(fmt, Path(tmp) / "one")
        t = time.perf_counter()
        fill(many, commits, per, one_commit=False)
        fill_s = time.perf_counter() - t
        fill(one, commits, per, one_commit=True)
        ends = [per * len(range(p, commits, PARTITIONS)) for p in range(PARTITIONS)]
        before, sum_before = reconcile_side(many, width, ends)
        t = time.perf_counter()
        report = open_sink(many, min_age_s=0.0).maintain_table()  # type: ignore[attr-defined]
        maintain_s = time.perf_counter() - t
        after, sum_after = reconcile_side(many, width, ends)
        single, sum_single = reconcile_side(one, width, ends)
        assert sum_before == sum_after == sum_single, "checksums differ"
        return {
            "format": fmt,
            "rows": commits * per,
            "live_commits": commits,
            "fill_s": round(fill_s, 2),
            "reconcile_before_s": round(before, 3),
            "maintain_s": round(maintain_s, 3),
            "maintenance": report.as_dict(),
            "reconcile_after_s": round(after, 3),
            "reconcile_one_commit_s": round(single, 3),
            "before_vs_one_commit": round(before / single, 2),
            "after_vs_one_commit": round(after / single, 2),
        }


def main() -> None:
    """Parse arguments, run both formats, print one JSON line per format."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--rows-per-commit", type=int, default=26)
    ap.add_argument("--width", type=int, default=1000, help="offsets per reconcile unit")
    ap.add_argument("--formats", default="iceberg,lance")
    args = ap.parse_args()
    for fmt in args.formats.split(","):
        print(json.dumps(run_format(fmt, args.commits, args.rows_per_commit, args.width)))


if __name__ == "__main__":
    main()
