"""One fault trial: a job on a fresh topic, a crash point armed, restart until done, the oracle.

A trial (:func:`run_trial`) produces randomized history (transactional batches, some aborted,
poison records), takes the cut, starts ``seamline live`` while a producer keeps writing, runs
``seamline run`` (and ``seamline reprocess`` for the reprocess point), with
``SEAMLINE_CRASH_AT=<point>`` and a marker file armed in EVERY process of the trial: the first
process to reach the point dies by SIGKILL (once per trial), anything that died is restarted
without changes until it exits cleanly, the live side catches up, and
:func:`coordinator.testing.oracle.check` counts anomalies. Every process runs the real
``seamline`` command in its own process group; nothing is mocked.

Used by ``bench/faults.py`` (the soak) and the ``kill_at`` fixture of the pytest plugin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from coordinator.core.faults import CRASH_ENV, MARKER_ENV, POINTS
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.testing.oracle import OracleReport, check

log = logging.getLogger(__name__)

SEAMLINE = str(Path(sys.executable).parent / "seamline")
REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 2
T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
RUN_POINTS = ("coordinator.mid_plan", "worker.before_commit", "worker.after_commit",
              "worker.commit_retry", "run.after_batch_commit", "reconcile.mid_scan")
#: Points in runs that stage slices (write-audit-publish, the coordinator's batch commits):
#: overwrite mode only.
STAGED_POINTS = ("run.before_publish", "run.after_batch_commit")
LIVE_POINTS = ("live.mid_batch", "live.after_commit", "maintenance")


@dataclass(frozen=True)
class TrialSpec:
    """What one trial runs: a crash point, a table format, a mode and a seed."""

    point: str
    fmt: str
    mode: str
    seed: int
    live_updates: bool = False  # merge: live records update history keys (see README)
    # Iceberg: the [table] lines naming the table and its catalog (identifier, catalog,
    # storage as inline tables) instead of a SQL catalog under the trial's folder
    table: str | None = None

    def __post_init__(self) -> None:
        if self.point not in POINTS:
            raise ValueError(f"expected a crash point of {sorted(POINTS)}, found {self.point!r}")
        if self.point in STAGED_POINTS and self.mode != "overwrite":
            raise ValueError(f"point {self.point} stages slices (publish = \"atomic\" or "
                             "committer = \"coordinator\"), which expected mode='overwrite', "
                             f"found mode={self.mode!r}")
        if self.fmt not in ("iceberg", "lance") or self.mode not in ("overwrite", "merge"):
            raise ValueError(f"expected iceberg|lance and overwrite|merge, found "
                             f"fmt={self.fmt!r} mode={self.mode!r}")


@dataclass
class TrialResult:
    """Where the process died (``died_at``: the marker), what was restarted, the oracle."""

    spec: TrialSpec
    died_at: str | None = None
    killed_by_sigkill: bool = False
    restarts: int = 0
    report: OracleReport | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def anomalies(self) -> int:
        return self.report.anomalies if self.report is not None else 1


class Producer(threading.Thread):
    """Writes records in transactions (about one in five aborted) plus poison, until stopped."""

    def __init__(self, bootstrap: str, topic: str, rng: random.Random, mode: str,
                 updates: bool = False) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Producer as KafkaProducer

        self.rng, self.topic, self.mode, self.update_keys = rng, topic, mode, updates
        self.producer = KafkaProducer({"bootstrap.servers": bootstrap, "linger.ms": 2,
                                       "transactional.id": f"soak-{rng.getrandbits(48):x}"})
        self.producer.init_transactions(30)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.next_id = 0
        self.updates: list[int] = []  # merge mode: history keys the live phase updates once

    def order_id(self) -> int:
        """A new id; in merge mode, once live, half the time an update of a history key
        (each at most once: the product refuses duplicate keys within one batch)."""
        if self.update_keys and self.is_alive() and self.updates and self.rng.random() < 0.5:
            return self.updates.pop(self.rng.randrange(len(self.updates)))
        if not self.is_alive():
            self.updates.append(self.next_id)
        return self.next_id

    def batch(self, n: int) -> None:
        self.producer.begin_transaction()
        for _ in range(n):
            oid = self.order_id()
            self.next_id += 1
            doc = {"order_id": oid, "ts": T0_MS + self.next_id * 1000,
                   "amount": round(self.rng.uniform(1, 100), 2)}
            value = b"{poison" if self.rng.random() < 0.03 else json.dumps(doc).encode()
            self.producer.produce(self.topic, value, key=str(oid).encode(),
                                  partition=oid % PARTITIONS)
        self.producer.flush(30)
        if self.rng.random() < 0.2:
            self.producer.abort_transaction(30)
        else:
            self.producer.commit_transaction(30)

    def run(self) -> None:
        try:
            while not self.stop.wait(self.rng.uniform(0.05, 0.4)):
                self.batch(self.rng.randint(1, 8))
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(60)
        if self.error is not None:
            raise self.error


def job_toml(root: Path, spec: TrialSpec, bootstrap: str, topic: str, rng: random.Random) -> str:
    if spec.fmt == "iceberg" and spec.table is not None:
        table = f'format = "iceberg"\n{spec.table}'
    elif spec.fmt == "iceberg":
        table = (f'format = "iceberg"\nidentifier = "soak.orders"\n'
                 f'catalog_uri = "sqlite:///{root}/catalog.db"\nwarehouse = "{root}/warehouse"')
    else:
        table = f'format = "lance"\nuri = "{root}/orders.lance"'
    key = 'key = ["order_id"]\n' if spec.mode == "merge" else ""
    # the publish crash point exists only in write-audit-publish runs, the batch commit's
    # only when the coordinator commits
    publish = {"run.before_publish": 'publish = "atomic"\n',
               "run.after_batch_commit": 'committer = "coordinator"\ncommit_batch_slices = 3\n'
               }.get(spec.point, "")  # fmt: skip
    return f"""[job]
id = "soak"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "{topic}-live"
[schema]
event_time = "ts"
required = ["order_id", "ts"]
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"
amount = "float64"
[table]
{table}
partition_by = "day"
{key}[backfill]
mode = "{spec.mode}"
{publish}slice_records = {rng.randint(15, 60)}
concurrency = 2
max_attempts = 5
[live]
batch_records = {rng.randint(10, 80)}
batch_seconds = 0.3
min_commit_seconds = 0.2
expire_snapshots_every = 2
keep_snapshots = 1
[state]
url = "sqlite:///{root}/state.db"
"""


class Procs:
    """The trial's ``seamline`` processes (own process groups; all killed at the end)."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env, self.started = root, env, list[subprocess.Popen[bytes]]()

    def start(self, *args: str, log_name: str) -> subprocess.Popen[bytes]:
        out = open(self.root / log_name, "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen([SEAMLINE, "--log-level", "INFO", *args], cwd=REPO,
                                env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for p in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)


def until_done(procs: Procs, result: TrialResult, *args: str, attempts: int = 6,
               timeout_s: float = 300) -> None:
    """Run ``seamline ARGS`` until it exits 0 (a SIGKILL is recorded and restarted)."""
    for _ in range(attempts):
        proc = procs.start(*args, log_name=f"{args[0]}.log")
        t0 = time.monotonic()
        code = proc.wait(timeout_s)
        result.notes.append(f"{args[0]} exit={code} s={time.monotonic() - t0:.1f}")
        if code == 0:
            return
        if code == -signal.SIGKILL:
            result.killed_by_sigkill = True
        result.restarts += 1
    raise AssertionError(f"seamline {args[0]}: expected exit 0 within {attempts} attempts, "
                         f"found {result.notes}")


def hwm_of(procs: Procs, job_file: Path) -> dict[int, int]:
    res = subprocess.run([SEAMLINE, "status", str(job_file), "--output", "json"], cwd=REPO,
                         env=procs.env, capture_output=True, text=True, timeout=120, check=True)
    cut = json.loads(res.stdout)["cut"]
    return {int(p["partition"]): int(p["hwm"]) for p in cut["partitions"]}


@contextlib.contextmanager
def live(procs: Procs, job_file: Path, result: TrialResult) -> Iterator[list[Any]]:
    """``seamline live`` for the block; the holder list always has the current process."""
    holder = [procs.start("live", str(job_file), "--partitions", "0,1", log_name="live.log")]
    yield holder
    holder[0].send_signal(signal.SIGTERM)
    holder[0].wait(60)


def keep_live(procs: Procs, job_file: Path, holder: list[Any], result: TrialResult) -> None:
    """Restart the live consumer if it died."""
    code = holder[0].poll()
    if code is None:
        return
    result.killed_by_sigkill |= code == -signal.SIGKILL
    result.restarts += 1
    result.notes.append(f"live exit={code}")
    holder[0] = procs.start("live", str(job_file), "--partitions", "0,1", log_name="live.log")


def settle(job: JobSpec, hwm: dict[int, int], procs: Procs, job_file: Path,
           holder: list[Any], result: TrialResult, timeout_s: float = 180) -> OracleReport:
    """Poll the oracle until the live side caught up (0 anomalies) or the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        keep_live(procs, job_file, holder, result)
        try:
            report = check(job, hwm)
        except OSError as exc:  # the catalog down (a catalog-kill drill): ask again
            if time.monotonic() > deadline:
                raise
            result.notes.append(f"oracle read refused, retrying: {type(exc).__name__}")
            time.sleep(1.0)
            continue
        if report.anomalies == 0 or time.monotonic() > deadline:
            result.notes.append(f"settle s={timeout_s - deadline + time.monotonic():.1f}")
            return report
        time.sleep(1.0)


def run_trial(spec: TrialSpec, root: Path, bootstrap: str, topic: str) -> TrialResult:
    """One trial on a fresh ``topic`` (``PARTITIONS`` partitions) under ``root``."""
    began, rng = time.monotonic(), random.Random(spec.seed)
    result = TrialResult(spec)
    (root / "warehouse").mkdir(parents=True, exist_ok=True)
    job_file = root / "job.toml"
    job_file.write_text(job_toml(root, spec, bootstrap, topic, rng), encoding="utf-8")
    job = load_job(job_file)
    marker = root / "crash.marker"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           CRASH_ENV: spec.point, MARKER_ENV: str(marker)}
    procs, producer = Procs(root, env), Producer(bootstrap, topic, rng, spec.mode,
                                               spec.mode == "merge" and spec.live_updates)
    try:
        for _ in range(rng.randint(8, 25)):
            producer.batch(rng.randint(1, 10))
        until_done(procs, result, "cut", str(job_file))
        producer.start()
        with live(procs, job_file, result) as holder:
            _run_phase(spec, procs, job_file, result)
            keep_live(procs, job_file, holder, result)
            time.sleep(rng.uniform(0, 1.5))
            producer.finish()
            result.report = settle(job, hwm_of(procs, job_file), procs, job_file, holder,
                                   result)
    finally:
        producer.stop.set()
        procs.kill_all()
    result.died_at = marker.read_text().split()[0] if marker.exists() else None
    result.seconds = time.monotonic() - began
    return result


def _run_phase(spec: TrialSpec, procs: Procs, job_file: Path, result: TrialResult) -> None:
    began = datetime.now(UTC) - timedelta(minutes=5)  # reprocess finds offsets by Kafka time
    time.sleep(random.Random(spec.seed + 1).uniform(0, 1.0))
    until_done(procs, result, "run", str(job_file), "--output", "json")
    if spec.point == "reprocess.between_slices":
        until_done(procs, result, "reprocess", str(job_file), "--from", _iso(began),
                   "--to", _iso(datetime.now(UTC)), "--output", "json")


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class KilledRun:
    """``seamline run`` of a user's job with one crash point armed, re-run until it exits 0.

    ``died_at`` is the point the marker file names (``None``: the point was never reached),
    ``exit_codes`` every attempt's exit code (``-9``: killed by the point), ``outcome`` the
    JSON the final attempt printed (``seamline run --output json``).
    """

    point: str
    died_at: str | None
    exit_codes: tuple[int, ...]
    outcome: dict[str, Any]
    stderr: str

    @property
    def restarts(self) -> int:
        """How many times ``seamline run`` was started again after the first attempt."""
        return len(self.exit_codes) - 1


def run_killed(job_file: Path, point: str, *, args: tuple[str, ...] = (), attempts: int = 4,
               timeout_s: float = 300) -> KilledRun:  # fmt: skip
    """Run ``seamline run JOB_FILE`` with ``point`` armed once across every process (the
    coordinator and its workers), then again without changes until it exits 0 (at most
    ``attempts`` runs in all); an :class:`AssertionError` with the last stderr otherwise."""
    if point not in POINTS:
        raise ValueError(f"expected a crash point of {sorted(POINTS)}, found {point!r}")
    marker = job_file.parent / f"crash-{point}.marker"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", CRASH_ENV: point, MARKER_ENV: str(marker)}
    codes: list[int] = []
    for _ in range(attempts):
        proc = subprocess.run([SEAMLINE, "run", str(job_file), "--output", "json", *args],
                              env=env, capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
        codes.append(proc.returncode)
        if proc.returncode == 0:
            died = marker.read_text().split()[0] if marker.exists() else None
            return KilledRun(point, died, tuple(codes), json.loads(proc.stdout), proc.stderr)
    raise AssertionError(f"seamline run {job_file}: expected exit 0 within {attempts} runs "
                         f"with {CRASH_ENV}={point}, found exit codes {codes}; last stderr:\n"
                         f"{proc.stderr[-4000:]}")  # fmt: skip
