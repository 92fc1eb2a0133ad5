"""Benchmark the worker pools (issue 16): the local process pool against Ray tasks.

    uv run python -m bench.pools [--slices 200] [--concurrency 2]

Each pool runs ``--slices`` empty slices (a function returning at once, through the same
``run_one`` as real slices: the epoch guard opens the state store around it) and prints the
time to the first outcome (start-up: processes or a local Ray, imports) and the fixed cost per
slice once warm (slices/s over the rest), then the ratio Ray / processes. Real slices add
their own reading and writing on top; this is the pool's overhead alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from coordinator.core.ports import SliceResult, SliceTask, WorkerPool
from coordinator.core.values import (
    CommitToken,
    Epoch,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
    Slice,
)
from coordinator.run.pool import ProcessWorkerPool
from coordinator.run.ray_pool import RayWorkerPool
from coordinator.state.store import StateStore


@dataclass(frozen=True)
class BenchJob:
    """What ``run_one`` needs of a job: its id and its state store."""

    job_id: str
    url: str

    def state_url(self) -> str:
        return self.url


def empty_slice(job: BenchJob, slice_: Slice, token: CommitToken) -> SliceResult:
    """A slice with nothing to read or write."""
    return SliceResult(rows=0, commit=None)


def _task(job: BenchJob, i: int) -> SliceTask:
    rng = (OffsetRange(PartitionId(0), Offset(i), Offset(i + 1)),)
    sid = f"k-p0-{i:09d}"
    token = CommitToken(job.job_id, sid, 1, Epoch(1), "backfill", rng)
    return SliceTask("bench.pools:empty_slice", job, Slice(sid, Scope("kafka", rng)), token)


def measure(pool: WorkerPool, job: BenchJob, slices: int) -> tuple[float, float]:
    """(seconds to the first outcome, seconds per slice after it)."""
    t0 = time.perf_counter()
    submitted, done, first, errors = 0, 0, 0.0, 0
    while done < slices:
        while submitted < slices and pool.in_flight() < pool.capacity:
            pool.submit(_task(job, submitted))
            submitted += 1
        for outcome in pool.completed(1.0):
            errors += outcome.error is not None
            done += 1
            if done == 1:
                first = time.perf_counter()
    pool.shutdown()
    if errors:
        raise SystemExit(f"{errors} slices failed")
    return first - t0, (time.perf_counter() - first) / max(slices - 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'state.db'}"
        with StateStore(url) as store:
            store.ensure_job("bench")
        job = BenchJob("bench", url)
        pools: list[tuple[str, WorkerPool]] = [
            ("processes", ProcessWorkerPool(args.concurrency)),
            ("ray (local)", RayWorkerPool(args.concurrency)),
        ]
        per_slice: dict[str, float] = {}
        print(f"{args.slices} empty slices, concurrency {args.concurrency}")
        for name, pool in pools:
            startup, each = measure(pool, job, args.slices)
            per_slice[name] = each
            print(f"{name:12s} first outcome {startup:6.2f} s   warm {each * 1000:7.2f} ms/slice"
                  f"   {1 / each:7.1f} slices/s")  # fmt: skip
        ratio = per_slice["ray (local)"] / per_slice["processes"]
        print(f"ratio ray / processes, warm per-slice cost: {ratio:.2f} x")


if __name__ == "__main__":
    main()
