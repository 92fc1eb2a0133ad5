"""Benchmark of the control plane at scale (issue 16 item 5): figures are printed, never asserted.

Cases (``--case``, default ``status,resume``):

* ``status``: a SQLite state store holding one plan of ``--slices`` slices (default 1 M; a
  tenth of them committed, a few failed), then ``seamline status`` as the CLI builds it
  (``status_json``: default summary, and ``--failed``) timed in this process, with the peak
  RSS growth. The store is kept in ``--dir`` and reused by later runs of the same size.
* ``resume``: on the same store, the coordinator's work before its first slice is submitted:
  the stored plan found (``ensure_plan_stored``) and the runner up to its first ``submit`` (a
  pool that records submissions; nothing is executed).
* ``scan``: the whole-plan reads left off that path: every to-do slice paged (the retention
  check once a log start moved past the cut) and ``seamline plan``'s stored plan.
* ``cut``: a topic of ``--partitions`` partitions (default 10 k) is created on the broker of
  ``KAFKA_BOOTSTRAP``, one record is produced to every partition, then ``read_cut`` (offsets
  of every partition + the event-time watermark) is timed ``--repeat`` times (median, each
  run, the load average); the topic is deleted afterwards. ``--topic`` reads an existing
  topic instead (kept). Use a broker of your own with a larger heap
  (``SEAMLINE_KAFKA_JVM_OPTS=-Xmx2g seamline broker start --data-dir ...``): a 512 MiB broker
  ran out of heap serving repeated fetches of 10 k partitions.
* ``slice``: the fixed cost of one history slice as a worker runs it (token lookup, then a
  10-row day bucket's scoped overwrite through the real sink) after 10 and after 1,000 slice
  commits, Iceberg (SQL catalog) and Lance: the median of ``--probe`` slices at each point,
  with the table's shape (versions/snapshots kept, fragments/manifests, config size). The
  table's maintenance cadence is ``--every`` commits (default 50, the job default; 0: never,
  the figure without maintenance); it removes snapshots/versions older than ``--min-age``
  seconds (default 60, as ``seamline run``) beyond the newest kept.

Usage::

    uv run python bench/control_plane.py [--case status,resume,scan,cut,slice] [--slices 1000000]
        [--partitions 10000] [--topic NAME] [--repeat 3] [--dir /tmp/seamline-bench-cp]
        [--probe 10] [--every 50] [--min-age 60]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.core.values import (  # noqa: E402
    CommitToken,
    Cut,
    Epoch,
    Offset,
    OffsetRange,
    PartitionCut,
    PartitionId,
    Scope,
    Slice,
    TimeBucket,
)

T0 = datetime(2021, 1, 1, tzinfo=UTC)


def rss_mb() -> float:
    """Peak resident set of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``, print its wall time and the peak-RSS growth it caused."""
    before = rss_mb()
    t = time.perf_counter()
    out = fn()
    took = time.perf_counter() - t
    print(f"  {label:<66} {took:8.3f} s   peak RSS +{rss_mb() - before:7.1f} MiB")
    return out


# -- the state store at N slices ---------------------------------------------------------------


def plan_slices(n: int, partitions: int = 100) -> Iterator[Slice]:
    """``n`` Kafka slices of 1,000 offsets spread over ``partitions`` partitions."""
    per = -(-n // partitions)
    for i in range(n):
        p, k = divmod(i, per)
        rng = OffsetRange(PartitionId(p), Offset(k * 1_000), Offset(k * 1_000 + 1_000))
        yield Slice(f"k-p{p}-{k * 1_000}", Scope("kafka", ranges=(rng,)), est_rows=1_000)


def build_store(url: str, n: int) -> None:
    """A store with job ``bench`` whose plan has ``n`` slices: ~10 % committed, 3 failed.

    The store, its cut and the first slices go through :class:`StateStore`; the bulk of the
    rows is written with one raw ``executemany`` (the same columns ``save_plan`` writes), or
    building a million-slice store would take longer than the figures it serves.
    """
    import json
    import sqlite3

    from coordinator.state.codec import scope_to_json
    from coordinator.state.store import StateStore

    per = -(-n // 100)
    cut = Cut("bench", "orders", tuple(
        PartitionCut(PartitionId(p), Offset(0), Offset(per * 1_000)) for p in range(100)
    ), T0, Epoch(1))  # fmt: skip
    head = 200
    slices = plan_slices(n)
    with StateStore(url) as store:
        epoch = store.ensure_job("bench")
        store.save_cut(cut)
        first = [next(slices) for _ in range(min(head, n))]
        store.save_plan("bench", epoch, first, f"bench-{n}")
        for s in first[: min(head, n // 10)]:
            store.mark_running("bench", s.slice_id, epoch)
            store.mark_committed("bench", s.slice_id, epoch, rows=1_000, token=None)
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    done = n // 10

    def rows() -> Iterator[tuple[Any, ...]]:
        for i, s in enumerate(slices, start=head):
            ok = i < done
            yield ("bench", 1, s.slice_id, i, "kafka", json.dumps(scope_to_json(s.scope)), "[]",
                   s.est_rows, 0, "committed" if ok else "pending", int(ok),
                   1_000 if ok else None, now if ok else None, now if ok else None,
                   0.5 if ok else None, 0.5 if ok else 0.0)  # fmt: skip

    with db:
        db.executemany(
            "INSERT INTO slices (job_id, epoch, slice_id, position, kind, scope, files, est_rows,"
            " est_bytes, status, attempts, rows, started_at, finished_at, duration_s,"
            " total_duration_s) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows(),
        )
    db.close()
    with StateStore(url) as store:
        for s in list(plan_slices(n))[-3:] if n <= 10 else _last(n, 3):
            store.mark_running("bench", s.slice_id, 1)
            store.mark_failed("bench", s.slice_id, 1, "bench: injected failure")


def _last(n: int, k: int) -> list[Slice]:
    out: list[Slice] = []
    for i, s in enumerate(plan_slices(n)):
        if i >= n - k:
            out.append(s)
    return out


def state_url(root: Path, n: int) -> str:
    """The bench store of ``n`` slices under ``root``, built when missing."""
    path = root / f"state-{n}.db"
    url = f"sqlite:///{path}"
    if not path.exists():
        print(f"building a store of {n:,} slices at {path} (once) ...")
        t = time.perf_counter()
        build_store(url, n)
        print(f"  built in {time.perf_counter() - t:.1f} s")
    return url


def case_status(url: str, n: int) -> None:
    """``seamline status`` (its JSON document: default summary and --failed)."""
    from coordinator.cli.jobs import status_json
    from coordinator.state.store import StateStore

    print(f"case=status slices={n:,}")
    with StateStore(url, create=False) as store:
        doc = timed("status (summary, as `seamline status`)", lambda: status_json("bench", store))
        timed("status --failed", lambda: status_json("bench", store, show="failed"))
    print(f"  counts={doc['counts']} slices listed={len(doc['slices'])}")


class _RecordingPool:
    """A WorkerPool that records the first submission and stops the runner there."""

    capacity = 2

    def __init__(self, t0: float, stop: Any) -> None:
        self.t0, self.stop = t0, stop
        self.first: float | None = None

    def submit(self, task: Any) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.t0
        self.stop.request()
        self.stop.request()  # abandon: nothing is executed

    def completed(self, timeout: float) -> list[Any]:
        return []

    def in_flight(self) -> int:
        return 0

    def shutdown(self, *, terminate: bool = False) -> None:
        return None


def case_resume(url: str, n: int) -> None:
    """Resume of a 1 M-slice job up to the first submitted slice."""
    from types import SimpleNamespace

    from coordinator.run.prepare import ensure_plan_stored
    from coordinator.run.runner import Runner, RunnerConfig, StopSignal
    from coordinator.state.store import StateStore

    print(f"case=resume slices={n:,}")
    with StateStore(url, create=False) as store:
        cut = store.get_cut("bench")
        assert cut is not None
        timed("stored plan (run_job's ensure_plan_stored)", lambda: ensure_plan_stored(
            SimpleNamespace(), cut))  # type: ignore[arg-type]  # fmt: skip
        stop = StopSignal()
        pool = _RecordingPool(time.perf_counter(), stop)
        job = SimpleNamespace(job_id="bench")
        runner = Runner(job, store, cut.epoch, RunnerConfig("bench:none"), stop=stop, pool=pool)
        pool.t0 = time.perf_counter()
        before = rss_mb()
        runner.run()
        print(f"  {'runner start -> first slice submitted':<66} {pool.first or float('nan'):8.3f} s"
              f"   peak RSS +{rss_mb() - before:7.1f} MiB")  # fmt: skip
        # the abandoned slice stays `running`, as after a crash: resume runs it again


def case_scan(url: str, n: int) -> None:
    """Whole-plan reads that remain (not on the status/resume path): ``plan`` showing the
    stored plan, and paging every to-do slice (the retention check after a log start moved
    past the cut)."""
    from coordinator.run.prepare import stored_plan
    from coordinator.state.store import StateStore

    print(f"case=scan slices={n:,}")
    with StateStore(url, create=False) as store:
        cut = store.get_cut("bench")
        assert cut is not None
        timed("every to-do slice paged (retention check after log_start moved)",
              lambda: sum(1 for _ in store.iter_slices(
                  "bench", cut.epoch, statuses=("pending", "running", "failed"))))  # fmt: skip
        timed("stored plan read back whole (`seamline plan`)", lambda: stored_plan(store, cut))


# -- the cut at N partitions -------------------------------------------------------------------


def case_cut(partitions: int, topic: str | None = None, repeat: int = 3) -> None:
    """``read_cut`` on a fresh topic of ``partitions`` partitions (one record in each), or on
    the existing ``topic`` (kept), ``repeat`` times each way: offsets only, then with the
    event-time watermark; each run's wall time, the median and the load average."""
    from coordinator.core.jobspec import parse_job
    from coordinator.plan.cut import read_cut
    from stream.broker.admin import delete_topics
    from stream.kafka import client
    from stream.kafka.offsets import TopicOffsets

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        raise SystemExit("case cut: set KAFKA_BOOTSTRAP to a broker (host:port)")
    fresh = topic is None
    name = topic or f"bench-cut-{uuid.uuid4().hex[:8]}"
    print(f"case=cut partitions={partitions if fresh else 'existing':} topic={name}")
    try:
        if fresh:
            timed("create topic", lambda: _create(bootstrap, name, partitions))
            offsets = TopicOffsets(client.plain(bootstrap), name, timeout_s=300)
            # until every leader serves offset queries (a listed leader may not, at first)
            timed("leaders serve offsets", lambda: offsets.high_watermarks(offsets.partitions()))
            timed("produce one record per partition", lambda: _produce_each(bootstrap, name,
                                                                             partitions))  # fmt: skip
        doc = {
            "job": {"id": "bench-cut"},
            "stream": {"bootstrap": bootstrap, "topic": name},
            "schema": {"fields": {"order_id": "int64", "ts": "timestamp_ms"},
                       "event_time": "ts"},
            "table": {"format": "lance", "uri": "/tmp/unused.lance"},
        }  # fmt: skip
        job = parse_job(doc, base_dir=Path(tempfile.gettempdir()), default_id="bench-cut")
        for label, wm in (
            ("read_cut (offsets only)", False),
            ("read_cut (offsets + watermark)", True),
        ):
            took = []
            for _ in range(repeat):
                t = time.perf_counter()
                reading = read_cut(job, 60.0, watermark=wm)
                took.append(time.perf_counter() - t)
            print(f"  {label:<40} median {statistics.median(took):6.3f} s  runs "
                  f"{' '.join(f'{x:.3f}' for x in took)}  load {os.getloadavg()[0]:.1f}"
                  f" on {os.cpu_count()} cores")  # fmt: skip
        print(f"  partitions read={len(reading.partitions):,} watermark_ms={reading.watermark_ms}")
        _time_save_cut(reading)
    finally:
        if fresh:
            delete_topics(bootstrap, [name])
            print(f"  deleted topic={name}")


def _time_save_cut(reading: Any) -> None:
    """The cut stored in a fresh SQLite state store (what ``seamline cut`` does next)."""
    from coordinator.state.store import StateStore

    with tempfile.TemporaryDirectory() as tmp, StateStore(f"sqlite:///{tmp}/state.db") as store:
        epoch = store.ensure_job("bench-cut")
        timed("save_cut (SQLite state store)", lambda: store.save_cut(reading.to_cut("bench-cut",
                                                                                     epoch)))  # fmt: skip


def _produce_each(bootstrap: str, topic: str, partitions: int) -> None:
    """One JSON record to every partition."""
    from stream.kafka import client

    producer = client.producer(client.plain(bootstrap))
    now_ms = int(time.time() * 1000)
    for p in range(partitions):
        for _ in range(100):  # the producer learns new partitions from metadata
            try:
                producer.produce(topic, b'{"order_id": %d, "ts": %d}' % (p, now_ms), partition=p)
                break
            except Exception:  # Local: Unknown partition, until metadata refreshes
                producer.poll(0.5)
        producer.poll(0)
    producer.flush(120)


def _create(bootstrap: str, topic: str, partitions: int, step: int = 5_000) -> None:
    """The topic in steps of ``step`` partitions (KRaft refuses one request creating more
    than ~10 k records: POLICY_VIOLATION "excessively large batch operation")."""
    from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

    from stream.broker.admin import create_topic
    from stream.kafka import client

    create_topic(bootstrap, topic, partitions=min(step, partitions), timeout=300.0)
    admin = client.admin(client.plain(bootstrap))
    have = min(step, partitions)
    while have < partitions:
        have = min(have + step, partitions)
        admin.create_partitions([NewPartitions(topic, have)])[topic].result(timeout=300)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic, timeout=30).topics[topic]
        if len(meta.partitions) == partitions and all(
            p.leader >= 0 for p in meta.partitions.values()
        ):
            return
        time.sleep(1)
    raise SystemExit(f"topic={topic}: {partitions} partitions did not get leaders in 300 s")


# -- per-slice fixed cost at 10 and 1,000 snapshots ----------------------------------------------


def case_slice(
    fmt: str, root: Path, probe: int, points: tuple[int, ...], every: int, min_age_s: float
) -> None:
    """Median per-slice time of a 10-row day slice (each slice its own day, so the probes at
    every point replace no rows: the fixed cost) after ``points`` slice commits, as a
    worker runs it (``backfill.executor``): the token lookup (``find_commit``), then the
    scoped overwrite (``write_slice``), with the table's maintenance cadence ``every`` (it
    removes snapshots/versions older than ``min_age_s`` only)."""
    from backfill.sinks import open_sink
    from bench.maintain import make_job

    job = make_job(fmt, root / fmt, every=every)
    sink = open_sink(job, min_age_s=min_age_s)
    sink.ensure_table()
    done = 0
    cadence = f"maintenance every {every} commits" if every else "no maintenance"
    print(f"case=slice format={fmt} {cadence}, min age {min_age_s:g} s")

    def write(i: int) -> tuple[float, float]:
        day = T0 + timedelta(days=i)  # a day of its own: the fixed cost, no rows to replace
        bucket = TimeBucket(day, day + timedelta(days=1))
        rows = _rows(i, day)
        token = CommitToken("bench", f"s-{i}", 1, Epoch(1), "backfill")
        t = time.perf_counter()
        found = sink.find_commit("bench", token.slice_id)
        t1 = time.perf_counter()
        assert found is None, f"slice s-{i} found committed before its write"
        sink.write_slice(Scope("archive", bucket=bucket), rows, token)
        return t1 - t, time.perf_counter() - t

    for point in points:
        t = time.perf_counter()
        while done < point:
            write(done)
            done += 1
        took = [write(done + k) for k in range(probe)]
        done += probe
        total = [w for _, w in took]
        print(f"  after {point:>5,} slice commits: {statistics.median(total) * 1e3:8.1f} ms/slice "
              f"(lookup {statistics.median(f for f, _ in took) * 1e3:.1f} ms; median of {probe};"
              f" min {min(total) * 1e3:.1f}, max {max(total) * 1e3:.1f}; reaching it took "
              f"{time.perf_counter() - t:.0f} s) {_shape(fmt, sink)}")  # fmt: skip


def _shape(fmt: str, sink: Any) -> str:
    """What the per-slice cost could grow with: the table's snapshots/versions and files."""
    if fmt == "lance":
        ds = sink._dataset()
        config = sum(len(k) + len(v) for k, v in ds.config().items())
        return (f"[version {ds.version}, {len(ds.versions())} versions kept, "
                f"{len(ds.get_fragments())} fragments, config {config:,} B]")  # fmt: skip
    table = sink._table()
    return (f"[{len(table.metadata.snapshots)} snapshots kept, "
            f"{len(table.inspect.manifests())} manifests]")  # fmt: skip


def _rows(i: int, day: datetime, n: int = 10) -> Any:
    """``n`` archive orders of slice ``i`` on ``day`` (the schema of ``bench.maintain``)."""
    import pyarrow as pa

    from stream.decode.base import add_lineage

    base = int(day.timestamp() * 1000)
    user = pa.table({
        "order_id": pa.array([i * n + k for k in range(n)], pa.int64()),
        "amount": pa.array([1.5 * k for k in range(n)], pa.float64()),
        "ts": pa.array([base + 1_000 * k for k in range(n)], pa.int64()).cast(
            pa.timestamp("ms", tz="UTC")),
    })  # fmt: skip
    return add_lineage(user, None, None, "archive", "backfill")


def main() -> None:
    """Parse arguments and run the chosen cases."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--case", default="status,resume")
    ap.add_argument("--slices", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=10_000)
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "seamline-bench-cp"))
    ap.add_argument("--probe", type=int, default=10)
    ap.add_argument("--formats", default="iceberg,lance")
    ap.add_argument("--every", type=int, default=50,
                    help="slice case: table maintenance every N commits (0: never)")
    ap.add_argument("--min-age", type=float, default=60.0,
                    help="slice case: maintenance keeps snapshots/versions younger than this")
    ap.add_argument(
        "--topic",
        default=None,
        help="case cut: an existing topic to read (kept) instead of a fresh one",
    )
    ap.add_argument("--repeat", type=int, default=3, help="case cut: runs of each read_cut")
    args = ap.parse_args()
    cases = set(args.case.split(","))
    unknown = cases - {"status", "resume", "scan", "cut", "slice"}
    if unknown:
        ap.error(f"expected --case among status,resume,scan,cut,slice, found {sorted(unknown)}")
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    if cases & {"status", "resume", "scan"}:
        url = state_url(root, args.slices)
        if "status" in cases:
            case_status(url, args.slices)
        if "resume" in cases:
            case_resume(url, args.slices)
        if "scan" in cases:
            case_scan(url, args.slices)
    if "cut" in cases:
        case_cut(args.partitions, args.topic, args.repeat)
    if "slice" in cases:
        for fmt in args.formats.split(","):
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                case_slice(fmt, Path(tmp), args.probe, (10, 1_000), args.every, args.min_age)


if __name__ == "__main__":
    main()
