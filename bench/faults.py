"""Fault soak: every crash point x table format x mode, N randomized trials, then the oracle.

Each trial (``coordinator.testing.soak.run_trial``) runs real ``seamline cut|live|run``
processes on a fresh topic with a live producer (transactional batches, some aborted, poison
records), arms ``SEAMLINE_CRASH_AT=<point>`` in all of them (the first to reach it dies by
SIGKILL), restarts whatever died until done, and counts anomalies with the independent oracle
(``coordinator.testing.oracle``). Prints one line per crash point and ends with
``fault soak: T trials over P crash points, anomalies A``.

``--broker-kills`` runs the trials on a PRIVATE local broker (``stream.broker.local`` on a
temp data dir, never the shared one) that a thread ``kill -9``s at random and restarts on the
same data dir. ``--catalog-kills`` runs the Iceberg trials on a PRIVATE local REST catalog
(Apache Iceberg's own server; its SQLite backing store lives in that process, so the kill
takes the store down with it) that a thread ``kill -9``s at random and restarts on the same
data dir and port; only Iceberg trials then (Lance has no catalog).

Usage: ``uv run python bench/faults.py --trials 20 [--points a,b] [--broker-kills]
[--catalog-kills]``
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.core.faults import POINTS  # noqa: E402
from coordinator.testing.soak import (  # noqa: E402
    PARTITIONS,
    STAGED_POINTS,
    TrialResult,
    TrialSpec,
    run_trial,
)
from stream.broker.admin import create_topic  # noqa: E402

COMBOS = list(itertools.product(("lance", "iceberg"), ("overwrite", "merge")))


class BrokerChaos(threading.Thread):
    """``kill -9`` the private broker every ``lo..hi`` seconds; restart it on its data dir."""

    def __init__(self, data_dir: Path, lo: float = 8.0, hi: float = 25.0) -> None:
        super().__init__(daemon=True)
        from stream.broker.local import start_local

        self.data_dir, self.lo, self.hi = data_dir, lo, hi
        self.broker = start_local(data_dir)
        self.stop = threading.Event()
        self.kills = 0

    def run(self) -> None:
        from stream.broker.local import start_local

        rng = random.Random(7)
        while not self.stop.wait(rng.uniform(self.lo, self.hi)):
            if self.broker.pid is not None:
                os.kill(self.broker.pid, signal.SIGKILL)
                self.kills += 1
            time.sleep(rng.uniform(0.5, 3.0))
            self.broker = start_local(self.data_dir)


class CatalogChaos(threading.Thread):
    """``kill -9`` the private REST catalog every ``lo..hi`` seconds; restart it on its data
    dir (same port: the trials' job files name it)."""

    def __init__(self, data_dir: Path, lo: float = 5.0, hi: float = 20.0) -> None:
        super().__init__(daemon=True)
        from backfill.sinks.iceberg.rest_server.local import start_catalog

        self.data_dir, self.lo, self.hi = data_dir, lo, hi
        self.server = start_catalog(data_dir)
        self.stop = threading.Event()
        self.kills = 0

    def table(self) -> str:
        """A trial's ``[table]`` lines: a fresh namespace on this catalog."""
        return (f'identifier = "soak_{uuid.uuid4().hex[:10]}.orders"\n'
                f'catalog = {{ type = "rest", uri = "{self.server.uri}" }}')

    def run(self) -> None:
        from backfill.sinks.iceberg.rest_server.local import kill_catalog, start_catalog

        rng = random.Random(11)
        while not self.stop.wait(rng.uniform(self.lo, self.hi)):
            self.kills += kill_catalog(self.data_dir) is not None
            time.sleep(rng.uniform(0.5, 3.0))
            self.server = start_catalog(self.data_dir)

    def finish(self) -> None:
        from backfill.sinks.iceberg.rest_server.local import stop_catalog

        self.stop.set()
        self.join(120)
        stop_catalog(self.data_dir)


def one(point: str, i: int, seed: int, bootstrap: str, work: Path, updates: bool,
        catalog: CatalogChaos | None = None) -> TrialResult:
    fmt, mode = COMBOS[i % len(COMBOS)]
    if catalog is not None:  # REST catalog kills: Iceberg trials, both modes
        fmt, mode = "iceberg", ("overwrite", "merge")[i % 2]
    if point in STAGED_POINTS:  # write-audit-publish, batch commits: overwrite mode only
        mode = "overwrite"
    topic = f"soak-{uuid.uuid4().hex[:12]}"
    create_topic(bootstrap, topic, partitions=PARTITIONS)
    root = work / f"{point}-{i}"
    root.mkdir()
    table = catalog.table() if catalog is not None else None
    spec = TrialSpec(point, fmt, mode, seed * 100_003 + i, live_updates=updates, table=table)
    try:
        return run_trial(spec, root, bootstrap, topic)
    except Exception as exc:  # a trial that could not finish counts as an anomaly
        result = TrialResult(spec)
        where = traceback.extract_tb(exc.__traceback__)[-14:]
        at = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(where))
        result.notes.append(f"trial failed: {type(exc).__name__}: {exc} (at {at})")
        return result


def line(point: str, results: list[TrialResult], seconds: float) -> str:
    fired = sum(r.died_at == point for r in results)
    anomalies = sum(r.anomalies for r in results)
    restarts = sum(r.restarts for r in results)
    return (f"{point:26s} trials={len(results):4d} fired={fired:4d} "
            f"restarts={restarts:4d} anomalies={anomalies} wall_s={seconds:.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2, help="trials per crash point")
    ap.add_argument("--points", default=",".join(sorted(POINTS)), help="comma-separated")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", ""))
    ap.add_argument("--broker-kills", action="store_true")
    ap.add_argument("--catalog-kills", action="store_true",
                    help="Iceberg trials on a private REST catalog killed -9 at random")
    ap.add_argument("--live-updates", action="store_true",
                    help="merge mode: live records update history keys")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seamline-faults-"))
    chaos = BrokerChaos(work / "broker") if args.broker_kills else None
    bootstrap = chaos.broker.bootstrap if chaos else args.bootstrap
    if not bootstrap:
        ap.error("expected --bootstrap or KAFKA_BOOTSTRAP (or --broker-kills), found neither")
    if chaos:
        chaos.start()
    catalog = CatalogChaos(work / "catalog") if args.catalog_kills else None
    if catalog:
        catalog.start()
    points = [p for p in args.points.split(",") if p]
    total, anomalies, began = 0, 0, time.monotonic()
    for point in points:
        t0 = time.monotonic()
        results = [one(point, i, args.seed, bootstrap, work, args.live_updates, catalog)
                   for i in range(args.trials)]
        print(line(point, results, time.monotonic() - t0), flush=True)
        for r in results:
            if r.anomalies:
                detail = r.report.to_json() if r.report else None
                print(f"  anomaly: {r.spec} notes={r.notes} report={detail}", flush=True)
        total += len(results)
        anomalies += sum(r.anomalies for r in results)
    if chaos:
        chaos.stop.set()
        print(f"broker kill -9: {chaos.kills}", flush=True)
    if catalog:
        catalog.finish()
        print(f"catalog kill -9: {catalog.kills}", flush=True)
    print(f"wall time: {time.monotonic() - began:.0f} s; work dir {work}")
    print(f"fault soak: {total} trials over {len(points)} crash points, anomalies {anomalies}")
    return 1 if anomalies else 0


if __name__ == "__main__":
    raise SystemExit(main())
