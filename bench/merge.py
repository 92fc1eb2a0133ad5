"""Benchmark merge mode (issue 13), all figures measured in one run.

    uv run python -m bench.merge [--rows 300000] [--months 6] [--reconcile-rows 1000000]
        [--rounds 2] [--commit-share 0.5]

1. Throughput of history writes under a concurrent live writer, per format: the overwrite
   writer (month slices) while a live process appends what arrived (2,000 records a second,
   events of one recent day; commits paced as ``seamline live`` paces them, by
   ``min_commit_seconds`` and ``--commit-share``), against the merge writer (month slices)
   while a live process MERGES such batches (a quarter of them corrections of history keys;
   a live commit's latency includes building its batch). Rows/s of the
   history side and the merge/overwrite ratio; progress under contention: the live writer's
   commits/s and per-commit latency (p50, max) while the history slices run against the same
   live writer alone on the same table right after (its baseline), conflicts retried on both
   sides and the Iceberg merge plans made (more plans than slices: re-plans after the head
   moved). The merged table is checked: one row per key. ``--rounds`` alternates overwrite
   and merge runs (fresh tables); each round's ratio is printed, then the best merge rate over
   the best overwrite rate (other work on a shared host only ever slows a run down).
2. Reconcile of a real Iceberg table of ``--reconcile-rows`` archive rows (12 month slices):
   ``reconcile.run.reconcile_job`` with ``mode = "overwrite"`` against the same table with
   ``mode = "merge"`` (key index, key uniqueness over the table, the superseded check of every
   unit's source side against the index, one table pass). Wall time of each (best of 2) and
   the ratio. (Superseded rows themselves are exercised by the e2e test, not here: archive
   rows of one key have no order among themselves without a ``version`` column.)
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backfill.sinks.iceberg.sink import IcebergSink
from backfill.sinks.lance.sink import LanceSink
from bench.backfill import USER, catalog, in_bucket, months, orders, token
from coordinator.core.jobspec import LiveSpec, load_job
from coordinator.core.values import Cut, Epoch, Offset, OffsetRange, PartitionId, Scope, Slice
from reconcile.run import reconcile_job
from stream.decode.base import add_lineage
from stream.live.core import BatchLimits

LIVE_RATE = 2_000  # records/s reaching the live writer; a commit takes all since the last
LIVE_DAY = datetime(2025, 6, 1, tzinfo=UTC)
ALONE_S = 6.0  # the live writer alone after the history slices: its baseline


def open_sink(kind: str, target: str, mode: str) -> IcebergSink | LanceSink:
    """The bench table in ``mode`` (merge on ``order_id``)."""
    key = ["order_id"]
    if kind == "iceberg":
        return IcebergSink(catalog(Path(target)), "bench.m", USER, "ts", mode=mode, key=key)  # type: ignore[arg-type]
    return LanceSink(target, USER, "ts", mode=mode, key=key)  # type: ignore[arg-type]


class Counted(logging.Handler):
    """Counts the commit-conflict retries (``backfill.sinks.common`` logs each one) and the
    Iceberg merge plans (``backfill.sinks.iceberg.merge`` logs each at debug) of a process."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.conflicts = self.plans = 0
        for name in ("backfill.sinks.common", "backfill.sinks.iceberg.merge"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.DEBUG)
            logger.addHandler(self)
            logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        self.conflicts += msg.startswith("commit conflict, retrying")
        self.plans += msg.startswith("merge plan:")


_COUNTED: list[Counted] = []


def counted() -> Counted:
    """The process's one counting handler (installed on first use)."""
    if not _COUNTED:
        _COUNTED.append(Counted())
    return _COUNTED[0]


def live_writer(
    kind: str, target: str, mode: str, rows: int, share: float, stop: Any, out: Any
) -> None:
    """Child process: live batches of the records that arrived at :data:`LIVE_RATE` since the
    last commit (events of one recent day), paced as ``seamline live`` paces its commits
    (``BatchLimits.gap``: ``[live] min_commit_seconds`` and ``max_commit_share = share``) until
    ``stop``; in merge mode a quarter are corrections of history keys (``0..rows``), the rest
    new keys. Puts ``(end, seconds)`` per commit on ``out`` (monotonic clock, shared by the
    processes of one host), then the retried conflicts (an int)."""
    count = counted()
    sink = open_sink(kind, target, mode)
    off, rng = 0, np.random.default_rng(5)
    limits = BatchLimits(LIVE_RATE, 1.0, LiveSpec().min_commit_seconds, max_commit_share=share)
    wait, last = limits.min_commit_seconds, time.monotonic()
    while not stop.wait(wait):  # paced as the live consumer is (BatchLimits.gap)
        t = time.monotonic()
        n = max(1, int(LIVE_RATE * (t - last)))  # the records that arrived since the last one
        last = t
        batch = orders(n, seed=off, base=10**9 + off)
        now = int(LIVE_DAY.timestamp() * 1000) + off  # live events are recent: one day
        stamps = pa.array(np.arange(now, now + n), pa.int64())
        batch = batch.set_column(3, USER.field("ts"), stamps.cast(USER.field("ts").type))
        if mode == "merge":
            ids = batch["order_id"].to_numpy().copy()
            ids[: n // 4] = rng.integers(0, rows, n // 4)
            batch = batch.set_column(0, "order_id", pa.array(ids, pa.int64()))
        part = OffsetRange(PartitionId(0), Offset(off), Offset(off + n))
        live = add_lineage(
            batch.select(USER.names),
            pa.array([0] * n, pa.int32()),
            pa.array(range(off, off + n), pa.int64()),
            "kafka",
            "live",
        )
        sink.append_live(live, token(f"live-{off}", "live", part))
        took = time.monotonic() - t
        wait = max(0.0, limits.gap(took) - took)
        out.put((time.monotonic(), took))
        off += n
    out.put(count.conflicts)


@dataclass(frozen=True)
class Live:
    """The live writer's commits in a window: count, per second, latency p50 / max."""

    commits: int
    per_s: float
    p50_s: float
    max_s: float

    @staticmethod
    def of(commits: list[tuple[float, float]], start: float, end: float) -> Live:
        lat = sorted(s for t, s in commits if start < t <= end)
        if not lat:
            return Live(0, 0.0, float("nan"), float("nan"))
        return Live(len(lat), len(lat) / (end - start), lat[len(lat) // 2], lat[-1])

    def __str__(self) -> str:
        return (f"{self.commits:>3} commits {self.per_s:5.2f}/s latency p50 {self.p50_s:5.2f} s "
                f"max {self.max_s:5.2f} s")  # fmt: skip


def history(
    kind: str, target: str, mode: str, data: pa.Table, buckets: int, share: float
) -> tuple[float, int]:
    """Month slices in ``mode`` under a concurrent live writer: (rows/s, live commits). Also
    the live writer alone for :data:`ALONE_S` after the slices (its baseline, same table)."""
    sink = open_sink(kind, target, mode)
    sink.ensure_table()
    count = counted()
    before = (count.conflicts, count.plans)
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=live_writer, args=(kind, target, mode, data.num_rows, share, stop, out))
    child.start()
    commits: list[tuple[float, float]] = [out.get(timeout=120) for _ in range(2)]  # it is up
    t0 = time.monotonic()
    for b in months()[:buckets]:
        sink.write_slice(Scope("archive", bucket=b), in_bucket(data, b), token(f"m-{b.label()}"))
    t1 = time.monotonic()
    time.sleep(ALONE_S)
    stop.set()
    while not isinstance(got := out.get(timeout=120), int):
        commits.append(got)
    child.join(120)
    t2 = max(t1 + ALONE_S, max(t for t, _ in commits))
    during, alone = Live.of(commits, t0, t1), Live.of(commits, t1, t2)
    dt = t1 - t0
    rate = data.num_rows / dt
    plans = f", {count.plans - before[1]} merge plans" if count.plans > before[1] else ""
    print(f"{kind:<8} {mode:<9} {data.num_rows:>9,} rows {dt:7.2f} s {rate:>10,.0f} rows/s "
          f"{buckets} slices, {count.conflicts - before[0]} conflicts retried{plans}",
          flush=True)  # fmt: skip
    print(f"{'':<4}live {mode:<9} during history: {during}", flush=True)
    print(f"{'':<4}live {mode:<9} alone after it: {alone}; conflicts retried {got} in all; "
          f"commits/s during / alone = {during.per_s / alone.per_s if alone.per_s else 0:.2f}",
          flush=True)  # fmt: skip
    if mode == "merge":
        ids = sink.scan(columns=["order_id"])["order_id"]
        distinct = len(pc.unique(ids))
        if distinct != len(ids):
            raise SystemExit(
                f"{kind} merge: expected one row per key, found {len(ids) - distinct} extra"
            )
        print(f"{'':<4}verified: {len(ids):,} rows, one per key", flush=True)
    return rate, during.commits


class _NoKafka:
    """The reconcile's Kafka side for an archive-only job: no partitions, nothing to read."""

    def ends(self, partitions: Any) -> dict[int, int]:
        return {}

    def read(self, ranges: Any) -> Any:
        raise AssertionError("an archive-only job reads no Kafka range")


def _job_file(root: Path, mode: str) -> Path:
    path = root / f"{mode}.toml"
    path.write_text(
        f"""[job]
id = "bench"
[stream]
bootstrap = "127.0.0.1:9"
topic = "bench"
[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
customer = "int64"
amount = "float64"
ts = "timestamp_ms"
[table]
format = "iceberg"
identifier = "bench.r"
catalog_uri = "sqlite:///{root / 'cat.db'}"
warehouse = "{root / 'wh'}"
key = ["order_id"]
partition_by = "none"
[history]
kafka = false
[[history.archive]]
glob = "{root}/none/*.parquet"
bucket = "month"
[backfill]
mode = "{mode}"
""",
        encoding="utf-8",
    )
    return path


def reconcile_cost(n: int) -> None:
    """``reconcile_job`` of one real Iceberg table, overwrite mode against merge mode."""
    buckets = months()[:12]
    data = orders(n * 3, seed=3)  # 3 years: the first 12 months hold ~n rows
    slices = {b: in_bucket(data, b) for b in buckets}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "wh").mkdir()
        cat = catalog(root)
        fast = IcebergSink(cat, "bench.r", USER, "ts", partition_by="none")
        sink = IcebergSink(cat, "bench.r", USER, "ts", partition_by="none",
                           mode="merge", key=["order_id"])  # type: ignore[arg-type]
        sink.ensure_table()
        plan = [Slice(f"m-{b.label()}", Scope("archive", bucket=b)) for b in buckets]
        t = time.perf_counter()
        for s in plan:  # distinct keys: overwrite writes them faster, the last month merges
            assert s.scope.bucket is not None
            writer = sink if s is plan[-1] else fast
            writer.write_slice(s.scope, slices[s.scope.bucket], token(s.slice_id))
        rows = sink.scan(columns=["order_id"]).num_rows
        print(f"reconcile table: {rows:,} rows "
              f"written by merge in {time.perf_counter() - t:.1f} s", flush=True)  # fmt: skip
        cut = Cut("bench", "bench", (), datetime.now(UTC), Epoch(1))
        times = {}
        for mode in ("overwrite", "merge"):
            job = load_job(_job_file(root, mode))
            best = float("inf")
            for _ in range(2):
                t = time.perf_counter()
                report = reconcile_job(job, cut, plan, quarantine={}, sink=sink, source=_NoKafka(),
                                       archive=lambda s: (slices[s.scope.bucket], 0))  # fmt: skip
                best = min(best, time.perf_counter() - t)
            totals = report.to_json()["totals"]
            print(f"reconcile {mode:<9} {best:7.2f} s reconciled={report.reconciled} "
                  f"superseded={totals.get('superseded')}", flush=True)  # fmt: skip
            times[mode] = best
    print(f"reconcile {n:,} rows: merge / overwrite time = "
          f"{times['merge'] / times['overwrite']:.2f}", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--reconcile-rows", type=int, default=1_000_000)
    p.add_argument("--formats", default="iceberg,lance")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--months", type=int, default=6, help="month slices written (of 36)")
    p.add_argument("--rounds", type=int, default=2, help="overwrite then merge, this many times")
    p.add_argument("--commit-share", type=float, default=LiveSpec().max_commit_share,
                   help="the live writer's [live] max_commit_share")  # fmt: skip
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    data = pa.concat_tables([in_bucket(orders(args.rows * 36 // args.months, seed=1), b)
                             for b in months()[: args.months]]).combine_chunks()  # fmt: skip
    for kind in [] if args.skip_throughput else args.formats.split(","):
        rates: dict[str, list[float]] = {"overwrite": [], "merge": []}
        for r in range(args.rounds):  # alternating: a burst of load on a shared host hits both
            for mode in ("overwrite", "merge"):
                with tempfile.TemporaryDirectory() as tmp:
                    target = Path(tmp) / mode[0]
                    where = str(target / "t.lance" if kind == "lance" else target)
                    rates[mode].append(history(kind, where, mode, data, args.months, args.commit_share)[0])
            ratio = rates["merge"][-1] / rates["overwrite"][-1]
            print(f"{kind}: round {r + 1} merge / overwrite = {ratio:.2f}", flush=True)
        best = max(rates["merge"]) / max(rates["overwrite"])
        print(f"{kind}: merge / overwrite = {best:.2f} (best of {args.rounds} each; target >= 0.5)",
              flush=True)  # fmt: skip
    reconcile_cost(args.reconcile_rows)


if __name__ == "__main__":
    main()
