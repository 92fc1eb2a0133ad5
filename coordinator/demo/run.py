"""``seamline demo``: onboard a live stream end to end on the embedded defaults.

Steps (every one real: a Kafka broker, an Iceberg SQL catalog or a Lance dataset, the live
consumer as its own process, the coordinator's runner and the reconciler):

1. a broker (``KAFKA_BOOTSTRAP``, else a local one under the workdir, stopped at the end);
2. a 3-partition topic; three years of orders: monthly Parquet archive + the newest year in
   the topic; the job file ``job.toml`` in the workdir;
3. a steady live producer (with late and malformed records), then the cut, then
   ``seamline live job.toml`` in its own process;
4. the backfill under the live stream (:func:`coordinator.service.run_job`, lag-gated);
5. the producer stops, live catches up (lag 0 on every partition), live stops (SIGTERM);
6. the final reconciliation, the report (text or JSON) and ``report.html``.

Every process the demo starts is stopped on success, error, SIGINT or SIGTERM (``demo.json``
in the workdir records their pids).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from coordinator.core.errors import (
    CancelledError,
    ConfigError,
    ExitCode,
    LiveError,
    ReconcileError,
)
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.core.values import Cut
from coordinator.demo.job import (
    PARTITIONS,
    S3_SECRET_ENV,
    TOPIC_CONFIG,
    CatalogKind,
    DemoPaths,
    DemoServices,
    Executor,
    Seeded,
    StorageKind,
    TableFormat,
    new_topic_name,
    prepare_workdir,
    render_job,
    seed_history,
)
from coordinator.demo.live import (
    LagWatch,
    LiveGuard,
    LiveProcess,
    LiveProducer,
    lag_probe,
    wait_caught_up,
)
from coordinator.demo.report import next_steps, reconcile_counts, table_json
from coordinator.run.progress import ProgressSink
from coordinator.run.runner import StopSignal

log = logging.getLogger(__name__)

Say = Callable[[str], None]
DEFAULT_ROWS = 200_000
DEFAULT_WORKDIR = Path("seamline-demo")
QUIET_EXECUTOR = "coordinator.demo.job:execute_slice_quietly"
MIN_LIVE_BEFORE_CUT = 100  # live records produced before the cut: the seam is mid-stream


@dataclass(frozen=True)
class DemoOptions:
    """What ``seamline demo`` was asked to do."""

    table_format: TableFormat = "iceberg"
    catalog: CatalogKind = "sql"
    storage: StorageKind = "local"
    rows: int = DEFAULT_ROWS
    workdir: Path = DEFAULT_WORKDIR
    reprocess: bool = False
    executor: Executor = "process"  # where the backfill's slices run: processes or Ray
    live_rate: float = 200.0  # live records per second
    catch_up_s: float = 180.0  # deadline for live to reach lag 0 after the producer stops

    def __post_init__(self) -> None:
        if self.table_format == "lance" and self.catalog != "sql":
            raise ConfigError(
                "key=--catalog: expected --table-format iceberg with --catalog rest, found lance",
                hint="a Lance dataset needs no catalog: drop --catalog (--storage s3 works)")
        if self.executor == "ray":  # missing seamline[ray]: say so before anything starts
            from coordinator.run.ray_pool import import_ray

            import_ray()


@dataclass(frozen=True)
class DemoResult:
    """The summary document and the exit code (OK only when reconciled)."""

    summary: dict[str, Any]
    exit_code: ExitCode


@dataclass
class _Pids:
    """``demo.json``: the processes the demo started, rewritten as they appear."""

    path: Path
    doc: dict[str, Any] = field(default_factory=dict)

    def record(self, **values: Any) -> None:
        self.doc.update(values)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        os.replace(tmp, self.path)  # readers never see a half-written file


def _check(stop: StopSignal) -> None:
    if stop.stop.is_set():
        raise CancelledError("the demo was cancelled (SIGINT/SIGTERM)", hint="run it again")


def _broker_pid(kind: str, data_dir: Path) -> int | None:
    if kind != "local":
        return None
    from stream.broker.local import read_state

    state = read_state(data_dir)
    return state.pid if state is not None else None


def _late_rows_in_table(job: JobSpec, seeded: Seeded) -> int:
    """Rows of the live producer whose event time lies in the archived years (they survived
    the archive's overwrite). Counted by order id, not by side: a late event produced before
    the cut (the producer runs while the cut is taken, slowly on a loaded host) is history,
    written by the backfill, and must be in the table just the same."""
    from coordinator.service import open_reader

    rows = open_reader(job).scan(columns=["ts", "order_id"])
    old = pc.less(rows["ts"], seeded.window.archive_end)
    produced_live = pc.greater_equal(rows["order_id"], seeded.next_order_id)
    return int(pc.sum(pc.and_(old, produced_live)).as_py() or 0)


@dataclass
class _TimedProgress:
    """Forwards to the real progress sink and notes when the runner started and stopped."""

    inner: ProgressSink
    started: float | None = None
    stopped: float | None = None

    def start(self, total: int, done: int) -> None:
        self.started = time.monotonic()
        self.inner.start(total, done)

    def slice_done(self, rows: int) -> None:
        self.inner.slice_done(rows)

    def retry(self) -> None:
        self.inner.retry()

    def note(self, text: str) -> None:
        self.inner.note(text)

    def stop(self) -> None:
        self.stopped = time.monotonic()
        self.inner.stop()

    @property
    def seconds(self) -> float:
        """How long the runner ran its slices."""
        if self.started is None or self.stopped is None:
            return 0.0
        return self.stopped - self.started


class _Demo:
    """One demo run (private): the state shared by the steps."""

    def __init__(self, options: DemoOptions, progress: ProgressSink, stop: StopSignal,
                 say: Say) -> None:  # fmt: skip
        self.options, self.progress, self.stop, self.say = options, progress, stop, say
        self.paths: DemoPaths = prepare_workdir(options.workdir)
        self.pids = _Pids(self.paths.pids)
        self.pids.record(demo_pid=os.getpid(), workdir=str(self.paths.root))
        self.t0 = time.monotonic()
        self.facts: dict[str, Any] = {}
        self.services = DemoServices()
        self.rest_warehouse: str | None = None

    def start_services(self, stack: contextlib.ExitStack) -> None:
        """Start the REST catalog and/or the S3 server the options ask for (stopped at exit)."""
        from backfill.sinks.iceberg.rest_server.local import start_catalog, stop_catalog
        from backfill.sinks.s3_server.local import create_bucket, start_s3, stop_s3

        services = DemoServices()
        if self.options.storage == "s3":
            s3 = start_s3(self.paths.s3)
            stack.callback(stop_s3, self.paths.s3)
            self.pids.record(s3_pid=s3.pid)
            bucket = create_bucket(s3, f"demo-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}")
            os.environ[S3_SECRET_ENV] = s3.secret_access_key  # read by job.toml, never written
            services = DemoServices(
                s3_endpoint=s3.endpoint, s3_region=s3.region,
                s3_access_key_id=s3.access_key_id, s3_bucket=bucket.removeprefix("s3://"),
            )  # fmt: skip
            self.say(f"S3: {s3.endpoint}, bucket {bucket} (seamline s3, pid {s3.pid})")
        if self.options.catalog == "rest":
            on_s3 = services.s3_bucket is not None
            rest = start_catalog(
                self.paths.rest_catalog,
                warehouse=f"s3://{services.s3_bucket}/warehouse" if on_s3 else None,
                properties=s3.iceberg_properties() if on_s3 else None,
            )
            stack.callback(stop_catalog, self.paths.rest_catalog)
            self.pids.record(rest_catalog_pid=rest.pid)
            services = dataclasses.replace(services, rest_uri=rest.uri)
            self.rest_warehouse = rest.warehouse
            self.say(f"REST catalog: {rest.uri}, warehouse {rest.warehouse} (seamline catalog, "
                     f"pid {rest.pid})")  # fmt: skip
        self.services = services

    def service_steps(self) -> list[str]:
        """Commands restarting the servers this demo used, on their recorded ports (the job
        file names them), and giving the job its S3 secret key from the server's record."""
        steps = []
        if self.options.storage == "s3":
            record = self.paths.s3 / "s3.json"
            read = "import json,sys; print(json.load(open(sys.argv[1]))['secret_access_key'])"
            steps += [
                f"uv run seamline s3 start --data-dir {self.paths.s3}",
                f'export {S3_SECRET_ENV}="$(python3 -c "{read}" {record})"',
            ]
        if self.options.catalog == "rest":
            steps.append(f"uv run seamline catalog start --data-dir {self.paths.rest_catalog}")
        return steps

    def seed(self, bootstrap: str) -> tuple[JobSpec, Seeded]:
        from stream.broker.admin import create_topic

        topic = new_topic_name()
        create_topic(bootstrap, topic, partitions=PARTITIONS, config=TOPIC_CONFIG)
        self.say(f"topic {topic} ({PARTITIONS} partitions); generating "
                 f"{self.options.rows:,} orders over three years")  # fmt: skip
        seeded = seed_history(self.paths, bootstrap, topic, self.options.rows)
        self.say(f"history: {seeded.archive_rows:,} rows in {seeded.archive_files} monthly "
                 f"Parquet files, {seeded.topic_records:,} records in the topic")  # fmt: skip
        self.paths.job.write_text(render_job(self.options.table_format, self.paths, bootstrap,
                                             topic, self.services, self.options.executor))  # fmt: skip
        self.say(f"job file: {self.paths.job}")
        return load_job(self.paths.job), seeded

    def start_live(self, stack: contextlib.ExitStack, job: JobSpec, seeded: Seeded) -> Cut:
        from coordinator.run.prepare import ensure_cut
        from coordinator.service import open_table

        open_table(job).ensure_table()
        producer = LiveProducer(job.stream.bootstrap, job.stream.topic, seeded.next_order_id,
                                seeded.window, self.options.live_rate)  # fmt: skip
        producer.start()
        stack.callback(_quietly, producer.stop)
        self.facts["producer"] = producer
        producer.wait_for(MIN_LIVE_BEFORE_CUT, timeout_s=30)
        cut = ensure_cut(job)
        self.say("cut: " + ", ".join(f"p{p.partition} [{p.log_start}, {p.hwm})"
                                     for p in cut.partitions) + " -> live from hwm")  # fmt: skip
        live = LiveProcess(self.paths.job, self.paths.live_log)
        self.pids.record(live_pid=live.start())
        stack.callback(live.stop)
        self.facts["live"] = live
        watch = LagWatch(lag_probe(job, {p.partition: p.hwm for p in cut.partitions}))
        watch.start()
        stack.callback(watch.stop)
        self.facts["watch"] = watch
        self.say(f"live: producing {self.options.live_rate:.0f} orders/s; seamline live "
                 f"pid={live.pid} consuming")  # fmt: skip
        return cut

    def backfill(self, job: JobSpec) -> dict[str, Any]:
        from coordinator.service import run_job

        where = "Ray tasks on a local Ray" if self.options.executor == "ray" else "processes"
        self.say(f"backfill: history slices in parallel under the live stream ({where})")
        timed = _TimedProgress(self.progress)
        guard = LiveGuard(self.facts["live"], self.stop.request)  # a dead consumer ends it
        guard.start()
        t0 = time.monotonic()
        try:
            outcome = run_job(job, executor=QUIET_EXECUTOR, progress=timed, stop=self.stop)
        finally:
            died = guard.stop()
        total_s = time.monotonic() - t0
        seconds = timed.seconds or total_s
        if died is not None:
            raise died
        _check(self.stop)
        if outcome.run.exit_code != ExitCode.OK:
            raise ReconcileError(
                f"job={job.job_id}: expected every slice committed, found "
                f"failed={list(outcome.run.failed)} remaining={outcome.run.remaining}",
                hint=f"see `uv run seamline status {shlex.quote(str(self.paths.job))}`",
            )
        kinds = [s.kind for s in (outcome.reconcile.slices if outcome.reconcile else ())]
        self.say(f"backfill: {outcome.run.rows:,} rows in {seconds:.1f}s; reconciled under "
                 f"live traffic: {outcome.reconciled} ({total_s - seconds:.1f}s)")  # fmt: skip
        return {
            "executor": self.options.executor,
            "slices": outcome.run.total,
            "archive_slices": kinds.count("archive"),
            "kafka_slices": kinds.count("history"),
            "backfill_rows": outcome.run.rows,
            "backfill_seconds": round(seconds, 2),
            "backfill_rows_per_s": round(outcome.run.rows / max(seconds, 1e-6), 1),
            "paused_s": round(sum(p.seconds for p in outcome.pauses), 2),
            "reconcile_under_live_seconds": round(total_s - seconds, 2),
            "reconciled_under_live": outcome.reconciled,
        }

    def incident(self, job: JobSpec, cut: Cut, seeded: Seeded) -> dict[str, Any]:
        from coordinator.demo.reprocess import run_reprocess_demo

        _check(self.stop)
        return run_reprocess_demo(job, cut, seeded.window, self.say)

    def finish_live(self) -> dict[str, Any]:
        from coordinator.demo.live import LATE_EVERY, POISON_AT

        producer: LiveProducer = self.facts["producer"]
        live: LiveProcess = self.facts["live"]
        watch: LagWatch = self.facts["watch"]
        producer.wait_for(POISON_AT[-1] + LATE_EVERY, timeout_s=60)
        producer.stop()
        self.say(f"live: producer stopped after {producer.sent:,} records; waiting for lag 0")
        wait_caught_up(watch, live, self.options.catch_up_s, self.stop.stop)
        watch.stop()
        code = live.stop()
        if code != 0:
            raise LiveError(f"live consumer pid={live.pid}: expected exit 0 after SIGTERM, "
                            f"found {code}", hint=f"see {live.log_file}")  # fmt: skip
        self.say(f"live: caught up (lag 0 on every partition), stopped cleanly; max lag "
                 f"{watch.max_lag:,} records")  # fmt: skip
        return {"live_records": producer.sent, "late_events": producer.late,
                "malformed_records": producer.poison, "live_lag_max": watch.max_lag}  # fmt: skip

    def reconcile(self, job: JobSpec, cut: Cut, seeded: Seeded) -> dict[str, Any]:
        from coordinator.service import open_reader, reconcile_run, report_facts
        from reconcile.report import render_html

        self.say("reconcile: checksums per slice, offset coverage per partition")
        t0 = time.monotonic()
        report, error = reconcile_run(job, cut)
        if report is None:
            raise ReconcileError(f"job={job.job_id}: reconciliation could not run: {error}")
        watch: LagWatch | None = self.facts.get("watch")
        facts = report_facts(job, list(watch.samples) if watch is not None else [])
        self.paths.html.write_text(render_html(report, facts), encoding="utf-8")
        doc = reconcile_counts(report)
        doc["table_rows"] = open_reader(job).scan(columns=["order_id"]).num_rows
        doc["late_events_in_table"] = _late_rows_in_table(job, seeded)
        doc["reconcile_seconds"] = round(time.monotonic() - t0, 2)
        self.facts["report"] = report
        return doc

    def summary(self, job: JobSpec, parts: list[dict[str, Any]]) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for part in parts:
            doc.update(part)
        table = table_json(job)
        if self.services.rest_uri is not None:  # the warehouse is the REST server's
            table["warehouse"] = self.rest_warehouse
        doc.update(table=table, topic=job.stream.topic,
                   bootstrap=job.stream.bootstrap, job_file=str(self.paths.job),
                   html_report=str(self.paths.html), workdir=str(self.paths.root),
                   wall_seconds=round(time.monotonic() - self.t0, 1))  # fmt: skip
        return doc


def _quietly(func: Callable[[], Any]) -> None:
    try:
        func()
    except Exception as exc:  # clean-up after an earlier error: that error is what matters
        log.warning("clean-up step failed: %s", exc)


def run_demo(
    options: DemoOptions, *, progress: ProgressSink, stop: StopSignal, say: Say
) -> DemoResult:
    """Run the whole demo (see the module docstring); stops everything it started."""
    from stream.broker.provide import provide_broker

    demo = _Demo(options, progress, stop, say)
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(provide_broker(demo.paths.broker))
        demo.pids.record(bootstrap=handle.bootstrap, broker_kind=handle.kind,
                         broker_pid=_broker_pid(handle.kind, demo.paths.broker))  # fmt: skip
        say(f"broker: {handle.bootstrap} ({handle.kind})")
        _check(stop)
        demo.start_services(stack)
        _check(stop)
        job, seeded = demo.seed(handle.bootstrap)
        _check(stop)
        cut = demo.start_live(stack, job, seeded)
        run = demo.backfill(job)
        if options.reprocess:  # under live traffic, like a real incident
            run["reprocess"] = demo.incident(job, cut, seeded)
        live = demo.finish_live()
        _check(stop)
        rec = demo.reconcile(job, cut, seeded)
    summary = demo.summary(job, [rec, run, live])
    summary["broker_kind"] = handle.kind
    summary["next_steps"] = next_steps(
        str(demo.paths.job), handle.kind, str(demo.paths.broker), str(demo.paths.html),
        demo.service_steps(),
    )
    ok = bool(summary["reconciled"]) and summary.get("reprocess", {}).get("ok", True)
    return DemoResult(summary, ExitCode.OK if ok else ExitCode.NOT_RECONCILED)
