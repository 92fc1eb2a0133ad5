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

from coordinator.core.errors import ConfigError, ExitCode, ReconcileError, SeamlineError
from coordinator.core.jobspec import load_job
from coordinator.run.progress import ProgressSink

if TYPE_CHECKING:
    from reconcile.report import TextShow

log = logging.getLogger(__name__)


class PhaseProgress:
    """``on_progress`` of the reconciler shown through a progress sink: phases as notes,
    compared units as slices (a bar on a TTY, throttled lines otherwise)."""

    def __init__(self, sink: ProgressSink) -> None:
        self.sink, self.started = sink, False

    def __call__(self, phase: str, done: int, total: int, rows: int) -> None:
        """One reconciler event."""
        from reconcile.run import UNITS

        if phase != UNITS:
            self.sink.note(phase)
        elif not self.started:
            self.started = True
            self.sink.note(f"comparing {total:,} slices and ranges")
            self.sink.start(total, 0)
        else:
            self.sink.slice_done(rows)

    def stop(self) -> None:
        """End the display (once units started)."""
        if self.started:
            self.sink.stop()


def _run(job_path: str, output: str, html: Path | None, min_age: float,
         show: TextShow = "summary") -> int:  # fmt: skip
    from coordinator.run.progress import progress_for
    from coordinator.service import reconcile_and_record, report_facts
    from reconcile.report import render_html, render_json, render_text

    job = load_job(job_path)
    progress = PhaseProgress(progress_for(label="reconcile"))
    try:
        report = reconcile_and_record(job, min_age_s=min_age, on_progress=progress)
    finally:
        progress.stop()
    click.echo(render_json(report) if output == "json" else render_text(report, show=show))
    if html is not None:
        from coordinator.core.logs import write_private

        write_private(html, render_html(report, report_facts(job)))  # 0640: reports name hosts and tables
    if not report.reconciled:
        return int(ExitCode.NOT_RECONCILED)
    return int(ExitCode.OK)


def register(group: click.Group) -> None:
    """Add the ``reconcile`` command to ``group``."""

    @group.command("reconcile")
    @click.argument("job_file", type=click.Path(dir_okay=False))
    @click.option("--all", "show_all", is_flag=True,
                  help="List every partition and compared unit (default: problems first, 20 each).")
    @click.option("--mismatched", "only_mismatched", is_flag=True,
                  help="List only failing partitions and mismatched units.")
    @click.option("--output", type=click.Choice(["text", "json"]), default="text",
                  show_default=True)
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
    )  # fmt: skip
    def reconcile(job_file: str, show_all: bool, only_mismatched: bool, output: str,
                  html: Path | None, min_age: float) -> None:  # fmt: skip
        """Compare source and table per slice and partition; exit 0 only when reconciled.

        Text output summarises: the totals, then partitions and units with problems first
        (20 of each unless --all; --mismatched lists only the problems). --output json is
        always complete.
        """
        if show_all and only_mismatched:
            raise click.UsageError("choose one of --all and --mismatched")
        show: TextShow = "all" if show_all else "mismatched" if only_mismatched else "summary"
        try:
            code = _run(job_file, output, html, min_age, show)
        except ConfigError:
            raise
        except SeamlineError as exc:
            raise ReconcileError(f"job={job_file}: reconciliation could not run: {exc}") from exc
        sys.exit(code)
