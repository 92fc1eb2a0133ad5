"""Warm workers: time to the first slice and per-slice fixed overhead, spawn vs warm, one run.

Runs the real ``seamline run`` (real executor, one fresh coordinator process per mode) on a
Kafka topic of ``--partitions`` x ``--records`` small records cut into slices of
``--slice-records`` into a fresh table (``--format iceberg|lance``), once per mode:

* ``spawn``: today's ``main``: spawned workers, a fresh sink (catalog, table) per slice;
* ``warm-nocache``: forkserver workers (the heavy modules imported once, in the fork server),
  a fresh sink per slice;
* ``warm``: forkserver workers that also keep their sink between slices (the default).

Before that, the pool alone (no broker, no table): how long a fresh pool takes to bring one
worker to a finished first task that has the slice's modules at hand (:func:`ready`): spawn,
warm with the fork server still to start (a cold ``seamline run``), warm with the fork server
up (every later worker: a replacement after a death, a run whose cut and plan outlast the
preload, the next run in a long-lived process).

The executor is wrapped (:func:`timed`) to log each slice's start and end in the worker.
Prints per mode: pool start -> first slice start (the worker's start-up), ``seamline run``
launch -> first slice committed, the median duration of each worker's first slice and of
its later slices (slices of a few records: that is the per-slice fixed overhead), the run's
wall time; then the ratios spawn / warm. Needs a broker:

    KAFKA_BOOTSTRAP=127.0.0.1:9092 uv run python -m bench.slices --format iceberg
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import SliceResult, SliceTask
from coordinator.core.values import (
    CommitToken,
    Epoch,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
    Slice,
)

REPO = Path(__file__).resolve().parents[1]
LOG_ENV = "SEAMLINE_BENCH_SLICES_LOG"
CACHE_ENV = "SEAMLINE_BENCH_SLICES_CACHE"
MODES = {"spawn": ("spawn", False), "warm-nocache": ("forkserver", False),
         "warm": ("forkserver", True)}  # fmt: skip


def _log(line: str) -> None:
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def timed(job: JobSpec, slice_: Slice, token: CommitToken) -> SliceResult:
    """The real executor, its start and end logged (``--executor bench.slices:timed``)."""
    from backfill import executor

    start = time.time()
    if os.environ.get(CACHE_ENV) == "0":
        executor._SINKS.clear()  # what main did: a fresh sink for every slice
    result = executor.execute_slice(job, slice_, token)
    _log(f"slice {slice_.slice_id} {os.getpid()} {start} {time.time()}")
    return result


@dataclass(frozen=True)
class PoolJob:
    """What a worker needs of a job when its executor writes nothing: id and state store."""

    job_id: str
    url: str

    def state_url(self) -> str:
        return self.url


def ready(job: PoolJob, slice_: Slice, token: CommitToken) -> SliceResult:
    """A task that has what a slice needs before its first row: executor, Iceberg, Lance."""
    import lance  # noqa: F401
    import pyiceberg.catalog.sql  # noqa: F401

    import backfill.executor  # noqa: F401

    return SliceResult(rows=0, commit=None)


def pool_start(mode: str, job: PoolJob, n: int) -> float:
    """Seconds from building a pool of ``mode`` to its first task's outcome (median of ``n``)."""
    from coordinator.run.pool import ProcessWorkerPool

    took = []
    for i in range(n):
        rng = (OffsetRange(PartitionId(0), Offset(0), Offset(1)),)
        tok = CommitToken(job.job_id, f"s{i}", 1, Epoch(1), "backfill", rng)
        task = SliceTask("bench.slices:ready", job, Slice(f"s{i}", Scope("kafka", rng)), tok)
        t0 = time.perf_counter()
        pool = ProcessWorkerPool(1, mp_context=mode)
        try:
            pool.submit(task)
            while not (done := pool.completed(0.05)):
                pass
            took.append(time.perf_counter() - t0)
        finally:
            pool.shutdown()
        if done[0].error:
            raise SystemExit(f"error: mode={mode}: the task failed: {done[0].error}")
    return statistics.median(took)


def pool_figures(root: Path, repeat: int) -> None:
    from coordinator.state.store import StateStore

    url = f"sqlite:///{root / 'pool-state.db'}"
    with StateStore(url) as store:
        store.ensure_job("bench-pool")
    job = PoolJob("bench-pool", url)
    spawn = pool_start("spawn", job, repeat)
    cold = pool_start("forkserver", job, 1)  # this process has no fork server yet
    up = pool_start("forkserver", job, repeat)
    print(f"pool -> first task done: spawn {spawn:.2f}s, warm (fork server starting) "
          f"{cold:.2f}s, warm (fork server up) {up:.3f}s; spawn / warm-up {spawn / up:.0f} x, "
          f"spawn / warm-cold {spawn / cold:.2f} x", flush=True)  # fmt: skip


def _child(mode: str, job: str) -> None:
    """The coordinator of one mode: ``seamline run`` in this process, its pool in ``mode``."""
    from coordinator.cli.main import main
    from coordinator.run import pool

    pool.DEFAULT_MP_CONTEXT = MODES[mode][0]
    init = pool.ProcessWorkerPool.__init__

    def logged_init(self: pool.ProcessWorkerPool, *args: object, **kwargs: object) -> None:
        _log(f"pool {time.time()}")
        init(self, *args, **kwargs)  # type: ignore[arg-type]

    pool.ProcessWorkerPool.__init__ = logged_init  # type: ignore[method-assign]
    sys.argv = ["seamline", "run", job, "--executor", "bench.slices:timed", "--output", "json"]
    main()


def job_toml(
    work: Path, topic: str, bootstrap: str, fmt: str, slice_records: int, workers: int
) -> str:
    table = (
        'format = "lance"\nuri = "table.lance"'
        if fmt == "lance"
        else f'format = "iceberg"\nidentifier = "bench.orders"\n'
        f'catalog_uri = "sqlite:///{work / "catalog.db"}"\nwarehouse = "warehouse"'
    )
    return f"""
[job]
id = "bench-slices"

[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"

[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"
amount = "float64"

[table]
{table}

[backfill]
slice_records = {slice_records}
concurrency = {workers}
"""


def produce(bootstrap: str, topic: str, partitions: int, records: int) -> None:
    from stream.broker.admin import create_topic
    from stream.kafka.client import plain, producer

    create_topic(bootstrap, topic, partitions=partitions, timeout=120)
    prod = producer(plain(bootstrap))
    n = 0
    for p in range(partitions):
        for _ in range(records):
            doc = {"order_id": n, "ts": 1_704_067_200_000 + n * 1000, "amount": 1.5}
            prod.produce(topic, json.dumps(doc).encode(), partition=p)
            n += 1
    if prod.flush(30):
        raise SystemExit("error: the broker did not take every record")


@dataclass
class Figures:
    worker_start: float  # pool built -> first slice started
    first_commit: float  # `seamline run` launched -> first slice done
    first_slice: float  # median over workers of their first slice
    later_slice: float  # median of every later slice
    wall: float
    slices: int


def run_mode(mode: str, root: Path, args: argparse.Namespace, bootstrap: str) -> Figures:
    work = root / mode
    work.mkdir()
    (work / "warehouse").mkdir()
    topic = f"bench-slices-{mode}-{uuid.uuid4().hex[:8]}"
    produce(bootstrap, topic, args.partitions, args.records)
    job = work / "job.toml"
    job.write_text(job_toml(work, topic, bootstrap, args.format, args.slice_records, args.workers))
    log = work / "times.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), LOG_ENV: str(log),
           CACHE_ENV: "1" if MODES[mode][1] else "0"}  # fmt: skip
    launched = time.time()
    done = subprocess.run([sys.executable, "-m", "bench.slices", "--child", mode, str(job)],
                          cwd=work, env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.time() - launched
    if done.returncode != 0:
        raise SystemExit(f"error: mode={mode}: seamline run failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    if not report.get("reconciled") or report["committed"] != report["total"]:
        raise SystemExit(f"error: mode={mode}: the run did not reconcile: {report}")
    lines = [ln.split() for ln in log.read_text().splitlines()]
    pool_at = min(float(ln[1]) for ln in lines if ln[0] == "pool")
    slices = sorted((float(s), float(e), int(pid)) for _, _, pid, s, e in
                    (ln for ln in lines if ln[0] == "slice"))  # fmt: skip
    firsts: dict[int, float] = {}
    later: list[float] = []
    for start, end, pid in slices:
        if pid in firsts:
            later.append(end - start)
        else:
            firsts[pid] = end - start
    return Figures(
        worker_start=slices[0][0] - pool_at,
        first_commit=min(e for _, e, _ in slices) - launched,
        first_slice=statistics.median(firsts.values()),
        later_slice=statistics.median(later) if later else float("nan"),
        wall=wall,
        slices=len(slices),
    )


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", choices=("iceberg", "lance"), default="iceberg")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--records", type=int, default=50, help="records per partition")
    ap.add_argument("--slice-records", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeat", type=int, default=3, help="pool starts per mode (median)")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"))
    args = ap.parse_args()
    if not args.bootstrap:
        raise SystemExit("error: no broker: pass --bootstrap or set KAFKA_BOOTSTRAP")
    modes = [m.strip() for m in args.modes.split(",")]
    if unknown := [m for m in modes if m not in MODES]:
        raise SystemExit(f"error: --modes: expected some of {sorted(MODES)}, found {unknown}")
    with tempfile.TemporaryDirectory(prefix="seamline-bench-pool-") as tmp:
        pool_figures(Path(tmp), args.repeat)
    print(f"{args.format}: {args.partitions} partitions x {args.records} records, slices of "
          f"{args.slice_records} records, {args.workers} workers")  # fmt: skip
    print(f"{'mode':<13}{'worker start':>13}{'1st commit':>12}{'1st slice':>11}"
          f"{'later slice':>13}{'wall':>8}{'slices':>8}")  # fmt: skip
    found: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="seamline-bench-slices-") as tmp:
        for mode in modes:
            f = found[mode] = run_mode(mode, Path(tmp), args, args.bootstrap)
            print(f"{mode:<13}{f.worker_start:>12.2f}s{f.first_commit:>11.2f}s"
                  f"{f.first_slice:>10.3f}s{f.later_slice:>12.3f}s{f.wall:>7.1f}s{f.slices:>8}",
                  flush=True)  # fmt: skip
    if "spawn" in found:
        base = found["spawn"]
        for mode in [m for m in found if m != "spawn"]:
            f = found[mode]
            print(f"spawn / {mode}: worker start {base.worker_start / f.worker_start:.1f} x, "
                  f"first commit {base.first_commit / f.first_commit:.2f} x, first slice "
                  f"{base.first_slice / f.first_slice:.2f} x, later slice "
                  f"{base.later_slice / f.later_slice:.2f} x, wall {base.wall / f.wall:.2f} x")


if __name__ == "__main__":
    main()
