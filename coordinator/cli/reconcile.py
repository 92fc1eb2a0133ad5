"""``seamline reconcile JOB``: prove every source record is in the table exactly once.

Exit codes: 0 reconciled, 1 a difference was found (the result is not recorded, no slice is
marked), 2 the comparison could not run (3 for an invalid job file, as everywhere).

Quarantined records are read from the job's dead-letter topic (``live.quarantine_topic`` or
``<topic>.seamline-dlq``) and count as quarantined, not lost. Without ``--min-age`` every
committed record up to the topic's end must be in the table: records the live consumer has
not written yet fail the run as ``in_flight``. With it, live records younger than the given
age are left out (counted as ``left_out``); older missing records still fail.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from coordinator.core.errors import ConfigError, ExitCode, ReconcileError, SeamlineError, StateError
from coordinator.core.jobspec import JobSpec, load_job

if TYPE_CHECKING:
    from coordinator.core.values import Cut
    from coordinator.state.slices import SliceRecord
    from coordinator.state.store import StateStore
    from reconcile.model import ReconcileReport
    from reconcile.run import UnitSource

log = logging.getLogger(__name__)


def _load_plan(job: JobSpec) -> tuple[StateStore, list[SliceRecord], Cut, int]:
    from coordinator.state.store import StateStore

    store = StateStore(job.state_url(), create=False)
    epoch = store.current_epoch(job.job_id)
    cut = store.get_cut(job.job_id, epoch)
    if cut is None:
        raise StateError(
            f"job_id={job.job_id} epoch={epoch}: expected a stored cut, found none",
            hint="run the backfill (which takes the cut) before reconciling",
        )
    records = store.list_slices(job.job_id, epoch)
    return store, records, cut, epoch


def _record(
    store: StateStore, job: JobSpec, epoch: int, records: list[SliceRecord], report: ReconcileReport
) -> None:
    by_id = {s.slice_id: s for s in report.slices}
    for rec in records:
        if rec.status == "committed":
            store.mark_reconciled(
                job.job_id, rec.slice_id, epoch, checksum=by_id[rec.slice_id].table.to_json()
            )
    store.record_reconcile(job.job_id, report.to_json(), True)


def reconcile_and_record(
    job: JobSpec, *, min_age_s: float = 0.0, source: UnitSource | None = None
) -> ReconcileReport:
    """Reconcile the job's stored plan; on a pass, record the result and mark the slices.

    The one entry point ``seamline reconcile`` and ``seamline run`` (``coordinator.
    orchestrate``) share. ``source`` replaces the Kafka side (e.g. bounded to the table's
    committed live offsets). Raises ``StateError`` without a stored cut.
    """
    from reconcile.run import reconcile_job

    store, records, cut, epoch = _load_plan(job)
    with store:
        slices = [r.slice for r in records]
        report = reconcile_job(job, cut, slices, min_age_s=min_age_s, source=source)
        if report.reconciled:
            _record(store, job, epoch, records, report)
    return report


def _run(job_path: str, output: str, html: Path | None, min_age: float) -> int:
    from reconcile.report import render_html, render_json, render_text

    job = load_job(job_path)
    report = reconcile_and_record(job, min_age_s=min_age)
    click.echo(render_json(report) if output == "json" else render_text(report))
    if html is not None:
        from coordinator.core.logs import write_private

        write_private(html, render_html(report))  # 0640: reports name hosts and tables
    if not report.reconciled:
        return int(ExitCode.NOT_RECONCILED)
    return int(ExitCode.OK)


def register(group: click.Group) -> None:
    """Add the ``reconcile`` command to ``group``."""

    @group.command("reconcile")
    @click.argument("job", type=click.Path(dir_okay=False))
    @click.option("--output", type=click.Choice(["text", "json"]), default="text")
    @click.option("--html", "html", type=click.Path(dir_okay=False, path_type=Path))
    @click.option(
        "--min-age",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help=(
            "Leave out live records whose Kafka timestamp is younger than this many seconds "
            "(still in flight); without it, records the live side has not written yet fail "
            "the run as in_flight."
        ),
    )
    def reconcile(job: str, output: str, html: Path | None, min_age: float) -> None:
        """Compare source and table per slice and partition; exit 0 only when reconciled."""
        try:
            code = _run(job, output, html, min_age)
        except ConfigError:
            raise
        except SeamlineError as exc:
            raise ReconcileError(f"job={job}: reconciliation could not run: {exc}") from exc
        sys.exit(code)
