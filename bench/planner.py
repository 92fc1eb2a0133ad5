"""Benchmark of the planner on huge plans (issue 19): time is measured and printed, never
asserted (the unit tier keeps its plans small; see tests/unit/test_planner.py).

Cases:

* ``wide``: 10,000 partitions of 5 M offsets each, ``slice_records`` 1 M (50,000 Kafka
  slices), plus 3 years of daily archive files (one file a day: 1,096 day buckets).
* ``deep``: one partition of 512 k offsets with slice size 1 (the draw of issue 19: 512 k
  slices).

For each case: ``make_plan`` end to end (best of ``--repeat``, CPU seconds), per slice, and its parts timed
alone: building the archive slices, building the Kafka slice objects, and the plan hash
(canonical JSON + sha256), each with its share of the total. ``--profile`` adds the top
functions by cumulative time (cProfile) for each case.

Usage: ``uv run python bench/planner.py [--case wide|deep|all] [--repeat 3] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.core.values import Cut, Epoch, Offset, PartitionCut, PartitionId  # noqa: E402
from coordinator.plan.planner import (  # noqa: E402
    ArchiveFile,
    archive_slices,
    kafka_slices,
    make_plan,
    plan_hash,
)

T0 = datetime(2021, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    """One planner input."""

    name: str
    cut: Cut
    slice_records: int
    files: tuple[ArchiveFile, ...]


def wide() -> Case:
    """10 k partitions x 5 M offsets (50 k Kafka slices) + 3 years of daily archive files."""
    parts = tuple(
        PartitionCut(PartitionId(p), Offset(1_000 * p), Offset(1_000 * p + 5_000_000))
        for p in range(10_000)
    )
    days = (T0 + timedelta(days=3 * 365) - T0).days + 1
    files = tuple(
        ArchiveFile(
            f"archive/day={d:04d}.parquet",
            T0 + timedelta(days=d),
            T0 + timedelta(days=d, hours=23, minutes=59),
            9_000,
            9_000 * 60,
        )
        for d in range(days)
    )
    return Case("wide", Cut("bench", "orders", parts, T0, Epoch(1)), 1_000_000, files)


def deep() -> Case:
    """One partition, 512 k offsets, slice size 1 (issue 19's falsifying draw)."""
    part = PartitionCut(PartitionId(0), Offset(13_850_515), Offset(13_850_515 + 512_000))
    return Case("deep", Cut("bench", "orders", (part,), T0, Epoch(1)), 1, ())


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(fewest CPU seconds of this process over ``repeat`` runs, the last result).

    CPU time, not wall time: on a shared machine other processes stretch the wall clock.
    """
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def measure(case: Case, repeat: int) -> None:
    """Print the end-to-end time and the share of each part."""
    total, plan = best_of(repeat, lambda: make_plan(case.cut, case.slice_records, case.files))
    n = len(plan.slices)
    t_arch, arch = best_of(repeat, lambda: archive_slices(case.files, "day"))
    t_kafka, kafka = best_of(repeat, lambda: kafka_slices(case.cut.partitions, case.slice_records))
    t_hash, _ = best_of(repeat, lambda: plan_hash(case.cut, arch + kafka))
    print(f"case={case.name} slices={n:,} (archive={len(arch):,} kafka={len(kafka):,})")
    print(f"  make_plan   {total:8.3f} s  {total / n * 1e6:7.2f} us/slice  (CPU seconds)")
    for label, t in (("archive", t_arch), ("kafka objs", t_kafka), ("plan hash", t_hash)):
        print(f"  {label:<11} {t:8.3f} s  {t / n * 1e6:7.2f} us/slice  {t / total:6.1%} of total")


def profile(case: Case, top: int = 12) -> None:
    """cProfile of one ``make_plan``: the top functions by cumulative time."""
    prof = cProfile.Profile()
    prof.runcall(make_plan, case.cut, case.slice_records, case.files)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def main() -> None:
    """Parse arguments and run the chosen cases."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=["wide", "deep", "all"], default="all")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"expected --repeat >= 1, found {args.repeat}")
    cases = [c() for c in (wide, deep) if args.case in ("all", c.__name__)]
    for case in cases:
        measure(case, args.repeat)
        if args.profile:
            profile(case)


if __name__ == "__main__":
    main()
