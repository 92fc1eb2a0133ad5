"""``seamline cut|plan|status|run``: the coordinator's commands.

Errors are raised as :class:`SeamlineError` and turned into one ``error: ...`` line and an
exit code by :func:`coordinator.cli.main.main`.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from coordinator.core.errors import ExitCode, StateError
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.core.values import Cut
from coordinator.plan.facts import count_kafka_slices
from coordinator.plan.planner import with_estimates
from coordinator.run.orchestrate import JobOutcome, pause_json
from coordinator.run.prepare import (
    PlanView,
    dry_run_plan,
    ensure_cut,
    ensure_plan,
    open_existing,
    plan_drift,
)
from coordinator.run.progress import ProgressSink, progress_for
from coordinator.run.runner import StopSignal
from coordinator.run.status import estimate_seconds, slice_status
from coordinator.run.summary import (
    DEFAULT_ROWS,
    Show,
    counts_text,
    humanize_bytes,
    humanize_seconds,
    pick_slices,
    plan_totals,
)
from coordinator.state.codec import scope_to_json
from coordinator.state.store import StateStore

DEFAULT_EXECUTOR = "backfill.executor:execute_slice"

_output = click.option(
    "--output", type=click.Choice(["text", "json"]), default="text", show_default=True
)
_timeout = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the broker.",
)


def cut_json(cut: Cut) -> dict[str, Any]:
    """Plain JSON of a cut."""
    return {
        "job_id": cut.job_id,
        "topic": cut.topic,
        "epoch": cut.epoch,
        "taken_at": cut.taken_at.isoformat(),
        "watermark_ms": cut.watermark_ms,
        "plan_hash": cut.plan_hash,
        "partitions": [
            {"partition": p.partition, "log_start": p.log_start, "hwm": p.hwm}
            for p in cut.partitions
        ],
    }


def plan_json(view: PlanView) -> dict[str, Any]:
    """Plain JSON of a plan with per-slice and total estimates."""
    plan = view.plan
    return {
        "job_id": plan.cut.job_id,
        "epoch": plan.cut.epoch,
        "plan_hash": plan.plan_hash,
        "stored": view.stored,
        "exact": view.exact,
        "cut": cut_json(plan.cut),
        "slices": [
            {
                "slice_id": s.slice_id,
                "kind": s.scope.source,
                "scope": scope_to_json(s.scope),
                "files": list(s.files),
                "est_rows": s.est_rows,
                "est_bytes": s.est_bytes,
            }
            for s in plan.slices
        ],
        "total": {
            "slices": len(plan.slices),
            "est_rows": plan.est_rows,
            "est_bytes": plan.est_bytes,
        },
    }


def _print_cut(cut: Cut) -> None:
    table = Table(title=f"cut job={cut.job_id} topic={cut.topic} epoch={cut.epoch}")
    for col in ("partition", "log_start", "hwm", "offsets below cut"):
        table.add_column(col, justify="right")
    for p in cut.partitions:
        table.add_row(str(p.partition), str(p.log_start), str(p.hwm), str(p.hwm - p.log_start))
    _console().print(table)
    click.echo(f"taken_at={cut.taken_at.isoformat()} watermark_ms={cut.watermark_ms}")


def _print_plan(view: PlanView, show_all: bool) -> None:
    plan = view.plan
    doc = plan_json(view)
    title = f"plan job={plan.cut.job_id} epoch={plan.cut.epoch} hash={plan.plan_hash[:12]}"
    table = Table(title=title)
    for col in ("slice", "kind", "est rows", "est bytes"):
        table.add_column(col, justify="right" if col.startswith("est") else "left")
    shown = doc["slices"] if show_all else doc["slices"][:DEFAULT_ROWS]
    for s in shown:
        table.add_row(s["slice_id"], s["kind"], f"{s['est_rows']:,}", humanize_bytes(s["est_bytes"]))
    if len(shown) < len(doc["slices"]):
        table.add_row(f"... {len(doc['slices']) - len(shown):,} more (--all)", "", "", "")
    for kind, n, rows, size in plan_totals(doc["slices"]):
        table.add_row(f"total {kind}", f"{n:,} slices", f"{rows:,}", humanize_bytes(size))
    table.add_row(
        "total", f"{len(plan.slices):,} slices", f"{plan.est_rows:,}", humanize_bytes(plan.est_bytes)
    )
    _console().print(table)
    click.echo(
        "row estimates: " + ("exact counts" if view.exact else "offset widths (upper bound)")
    )


def _console() -> Console:
    """Stdout console; wide when not a terminal so ids are never cut short."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _job(path: str) -> JobSpec:
    return load_job(path)


def _recount(job: JobSpec, view: PlanView) -> PlanView:
    kafka = [s for s in view.plan.slices if s.scope.source == "kafka"]
    counts = count_kafka_slices(job, view.plan.cut, kafka)
    return PlanView(with_estimates(view.plan, counts), stored=view.stored, exact=True)


def _plan_view(job: JobSpec, dry_run: bool, count: bool, timeout_s: float) -> PlanView:
    if dry_run:
        view = dry_run_plan(job, count=count, timeout_s=timeout_s)
    else:
        view = ensure_plan(job, ensure_cut(job, timeout_s=timeout_s), count=count)
    return _recount(job, view) if count and not view.exact else view


def warn_plan_drift(job: JobSpec, job_file: str) -> bool:
    """Say on stderr when the job file no longer gives the stored plan; ``True`` if so."""
    message = plan_drift(job, job_file)
    if message is not None:
        click.echo(f"warning: {message}", err=True)
    return message is not None


def status_json(
    job_id: str, store: StateStore, show: Show = "summary", *, atomic: bool = True
) -> dict[str, Any]:
    """Slice counts and totals, a bounded list of slices (every one with ``show="all"``),
    live progress and the latest reconcile result; never the whole plan in memory."""
    cut = store.get_cut(job_id)
    latest = store.latest_reconcile(job_id)
    return {
        "job_id": job_id,
        "state_url": store.url,
        "cut": cut_json(cut) if cut is not None else None,
        **slice_status(store, job_id, cut.epoch if cut is not None else None, show, atomic=atomic),
        "live": [
            {
                "partition": p.partition,
                "committed_offset": p.committed_offset,
                "high_watermark": p.high_watermark,
                "lag": p.lag,
                "quarantined": p.quarantined,
                "updated_at": p.updated_at.isoformat(),
            }
            for p in store.get_live_progress(job_id)
        ],
        "pauses": [pause_json(p) for p in store.list_pauses(job_id)],
        "runs": [r.to_json() for r in store.list_runs(job_id)],  # detached runs, newest first
        "reconcile": None
        if latest is None
        else {
            "run_at": latest.run_at.isoformat(),
            "reconciled": latest.reconciled,
            "document": dict(latest.document),
        },
    }


def _print_status(doc: dict[str, Any], show: Show, concurrency: int) -> None:
    console = _console()
    table = Table(title=f"job={doc['job_id']} slices: {counts_text(doc['counts'])}")
    for col in ("slice", "status", "attempts", "rows", "duration s", "last error"):
        table.add_column(col)
    shown, _ = pick_slices(doc["slices"], "all")
    more = doc["slices_more"]
    for s in shown:
        duration = "" if s["duration_s"] is None else f"{s['duration_s']:.2f}"
        table.add_row(
            s["slice_id"],
            s["status"],
            str(s["attempts"]),
            "" if s["rows"] is None else f"{s['rows']:,}",
            duration,
            (s["last_error"] or "")[:60],
        )
    if more:
        table.add_row(f"... {more:,} more (--all)", "", "", "", "", "")
    console.print(table)
    run = doc.get("running")
    if run is not None:
        click.echo(f"running: a coordinator holds the job (pid={run['pid']}, host={run['host']}, "
                   f"since={run['since']}); slices marked retrying run again in it")  # fmt: skip
    for s in doc["slices"]:
        if s["status"] == "failed" and s["last_error"]:
            click.echo(f"failed slice={s['slice_id']}: {s['last_error']}")
    remaining, count = doc["remaining"], doc["remaining_count"]
    click.echo(
        f"remaining: {count} slices not yet committed"
        + (f" ({_id_list(remaining)})" if 0 < count <= 5 else "")
    )
    pub = doc.get("publish")
    if pub is not None and pub["state"] == "staged":
        click.echo(f"publish: staged ({pub['staged']} slices staged, not visible until published)")
    elif pub is not None:
        click.echo(f"publish: published in one commit (snapshot_id={pub['snapshot_id']})")
    left = estimate_seconds(doc["summary"], concurrency)
    if left:
        click.echo(f"estimated time left: {humanize_seconds(left)} at the pace so far")
    for p in doc["live"]:
        click.echo(
            f"live partition={p['partition']} committed={p['committed_offset']} "
            f"hwm={p['high_watermark']} lag={p['lag']} quarantined={p['quarantined']}"
        )
    pauses = doc["pauses"]
    if pauses:
        total = sum(p["seconds"] for p in pauses)
        click.echo(
            f"paused {len(pauses)} times ({total:.1f}s) for live lag, "
            f"last at {pauses[-1]['started_at']}"
        )
    for r in doc["runs"]:
        click.echo(
            f"detached run={r['run_id']} {r['state']} pid={r['pid']} started={r['started_at']}"
            + (f" exit_code={r['exit_code']}" if r["exit_code"] is not None else "")
            + f" log={r['log_path']}"
        )
    rec = doc["reconcile"]
    click.echo(
        "reconcile: none yet"
        if rec is None
        else f"reconcile: reconciled={rec['reconciled']} at {rec['run_at']}"
    )


def _id_list(ids: list[str], shown: int = 5) -> str:
    more = len(ids) - shown
    return ", ".join(ids[:shown]) + (f", ... {more} more" if more > 0 else "")


@contextmanager
def _signals(stop: StopSignal) -> Iterator[None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.request()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _progress(job: JobSpec, metrics_port: int | None, metrics_host: str) -> ProgressSink:
    """The terminal's sink; with a metrics port, wrapped to feed ``/metrics`` too."""
    progress = progress_for()  # stderr: a bar on a TTY, throttled lines otherwise
    if metrics_port is None:
        return progress
    from coordinator.run.metrics import MetricsProgress, RunMetrics, store_readers

    metrics = RunMetrics(job.job_id, *store_readers(job.state_url(), job.job_id))
    metrics.serve(metrics_port, metrics_host)
    return MetricsProgress(progress, metrics)


def _run(
    job: JobSpec,
    executor: str,
    timeout_s: float,
    min_age_s: float,
    takeover: bool,
    progress: ProgressSink,
    selection: tuple[tuple[str, ...], int | None] = ((), None),
) -> JobOutcome:
    stop = StopSignal()
    from coordinator.service import run_job

    with _signals(stop):
        return run_job(
            job,
            executor=executor,
            progress=progress,
            stop=stop,
            min_age_s=min_age_s,
            timeout_s=timeout_s,
            takeover=takeover,
            only=selection[0],
            limit=selection[1],
        )


def _print_outcome(out: JobOutcome, job_file: str) -> None:
    run = out.run
    click.echo(
        f"job={out.cut.job_id} committed {run.committed}/{run.total} slices, "
        f"{run.rows:,} rows, {run.retries} retries, failed={list(run.failed)}"
        + (" (cancelled)" if run.cancelled else "")
    )
    for sid, error in run.errors:
        click.echo(f"failed slice={sid}: {error}")
    if run.not_selected:
        click.echo(
            f"partial run: {len(run.not_selected)} slices not selected remain "
            f"({_id_list(list(run.not_selected))}); run again without --only/--limit "
            "to finish and reconcile"
        )
    if out.pauses:
        total = sum(p.seconds for p in out.pauses)
        click.echo(f"paused {len(out.pauses)} times ({total:.1f}s) for live lag")
    if out.reconcile is not None:
        t = out.reconcile.totals()
        counts = " ".join(
            f"{k}={t[k]}"
            for k in ("lost", "duplicated", "phantom", "overlap", "gap", "quarantined",
                      "source_records", "table_rows")
        )  # fmt: skip
        click.echo(f"reconciled={out.reconcile.reconciled} {counts}")
    elif out.reconcile_error is not None:
        click.echo(f"not reconciled: reconciliation could not run: {out.reconcile_error}")
    pub = out.publish
    if pub is not None and pub.state == "published":
        click.echo(f"published {pub.slices} staged slices in one commit "
                   f"(snapshot_id={pub.snapshot_id})")  # fmt: skip
    elif pub is not None:
        click.echo(f"publish blocked: {pub.slices} slices stay staged, nothing of the backfill "
                   f"is visible ({pub.error})")  # fmt: skip
    if out.exit_code == ExitCode.NOT_RECONCILED:
        click.echo(f"not reconciled: see `seamline reconcile {job_file} --html report.html`")


def _detach(job: JobSpec, job_file: str, args: list[str], output: str) -> None:
    from coordinator.run.detach import start_detached

    run = start_detached(job, job_file, args)
    if output == "json":
        click.echo(json.dumps(run.to_json()))
    else:
        click.echo(run.run_id)
        click.echo(
            f"detached run_id={run.run_id} pid={run.pid} log={run.log_path}; follow it with "
            f"`seamline wait {job_file} {run.run_id}`",
            err=True,
        )


def register(group: click.Group) -> None:
    """Add ``cut``, ``plan``, ``status`` and ``run`` to ``group``."""

    @group.command()
    @click.argument("job_file", type=click.Path(dir_okay=False))
    @click.option("--new-cut", is_flag=True, help="Take a new cut (bumps the epoch).")
    @click.option(
        "--adopt",
        is_flag=True,
        help="Take the first cut of a job whose table it already wrote (a lost state store); "
        "hwm starts at the table's live offsets.",
    )
    @_output
    @_timeout
    def cut(job_file: str, new_cut: bool, adopt: bool, output: str, timeout_s: float) -> None:
        """Take (once) and show the job's cut: log_start and hwm per partition."""
        result = ensure_cut(
            _job(job_file), new_cut=new_cut, adopt=adopt, timeout_s=timeout_s, transform=False
        )
        if output == "json":
            click.echo(json.dumps(cut_json(result)))
        else:
            _print_cut(result)

    @group.command()
    @click.argument("job_file", type=click.Path(dir_okay=False))
    @click.option("--dry-run", is_flag=True, help="Write nothing (not even the state store).")
    @click.option(
        "--count/--no-count",
        default=True,
        show_default=True,
        help="Count Kafka records exactly (reads the topic) or use offset widths.",
    )
    @click.option("--all", "show_all", is_flag=True, help="List every slice (default: the first 20).")
    @_output
    @_timeout
    def plan(
        job_file: str, dry_run: bool, count: bool, show_all: bool, output: str, timeout_s: float
    ) -> None:
        """Show the slice list with estimated rows and bytes per slice and in total."""
        job = _job(job_file)
        warn_plan_drift(job, job_file)
        view = _plan_view(job, dry_run, count, timeout_s)
        if output == "json":
            click.echo(json.dumps(plan_json(view)))
        else:
            _print_plan(view, show_all)

    @group.command()
    @click.argument("job_file", type=click.Path(dir_okay=False))
    @click.option("--all", "show_all", is_flag=True, help="List every slice.")
    @click.option("--failed", "only_failed", is_flag=True, help="List only failed slices.")
    @_output
    def status(job_file: str, show_all: bool, only_failed: bool, output: str) -> None:
        """Per-slice state, live progress and the latest reconcile result."""
        job = _job(job_file)
        store = open_existing(job)
        if store is None:
            raise StateError(
                f"job={job.job_id}: no state store yet", hint="run `seamline cut` or `seamline run`"
            )
        warn_plan_drift(job, job_file)
        with store:
            show: Show = "failed" if only_failed else "all" if show_all else "summary"
            doc = status_json(job.job_id, store, show, atomic=job.backfill.publish == "atomic")
        if output == "json":
            click.echo(json.dumps(doc))
        else:
            _print_status(doc, show, job.backfill.concurrency)

    @group.command()
    @click.argument("job_file", type=click.Path(dir_okay=False))
    @click.option(
        "--executor",
        default=DEFAULT_EXECUTOR,
        show_default=True,
        help="Slice executor as module:function.",
    )
    @click.option(
        "--min-age",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="Leave live records younger than this many seconds out of the reconciliation.",
    )
    @click.option(
        "--takeover",
        is_flag=True,
        help="Take the job's lease from another coordinator (only once it is dead).",
    )
    @click.option(
        "--only",
        "only",
        multiple=True,
        metavar="SLICE-GLOB",
        help="Run only the slices whose id matches this glob (repeatable); the plan is kept.",
    )
    @click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=None,
        help="Run at most this many of the slices still to do (plan order).",
    )
    @click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
                  help="Serve Prometheus /metrics here while the run lasts.")  # fmt: skip
    @click.option("--metrics-host", default="127.0.0.1", show_default=True,
                  help="Address /metrics binds to (0.0.0.0 exposes it to the network).")  # fmt: skip
    @click.option("--detach", is_flag=True,
                  help="Run in the background; print the run id at once (`seamline wait`).")  # fmt: skip
    @_output
    @_timeout
    def run(
        job_file: str, executor: str, output: str, timeout_s: float, min_age: float,
        takeover: bool, metrics_port: int | None, metrics_host: str, only: tuple[str, ...],
        limit: int | None, detach: bool,
    ) -> None:
        """Cut (reused), plan (reused), run every slice not yet committed, then reconcile.

        Exit 0 only when every slice committed and reconciliation passed. One coordinator per
        job: another running one is refused (exit 2) unless its lease expired or --takeover.
        --only/--limit run a subset (exit 5, partial, while slices remain). --detach starts
        the run in the background and prints its run id (follow it with `seamline wait`).
        """
        job = _job(job_file)
        if detach:
            args = [
                "--executor", executor, "--output", output, "--timeout", str(timeout_s),
                "--min-age", str(min_age), *(["--takeover"] if takeover else []),
                *[a for g in only for a in ("--only", g)],
                *(["--limit", str(limit)] if limit is not None else []),
                *(["--metrics-port", str(metrics_port), "--metrics-host", metrics_host]
                  if metrics_port is not None else []),
            ]  # fmt: skip
            _detach(job, job_file, args, output)
            return
        warn_plan_drift(job, job_file)
        progress = _progress(job, metrics_port, metrics_host)
        out = _run(job, executor, timeout_s, min_age, takeover, progress, (only, limit))
        if output == "json":
            click.echo(json.dumps(out.to_json()))
        else:
            _print_outcome(out, job_file)
        sys.exit(int(out.exit_code))  # SystemExit: cli.main drops click Exit codes
