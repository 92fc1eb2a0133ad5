"""``seamline maintain JOB``: compact small files and expire old snapshots of the job's table.

Safe while the live consumer and a backfill run: every maintenance commit is conditional on the
table state it read (a concurrent commit makes it re-plan or skip a round, never lose a row).
The live consumer and ``seamline run`` also maintain automatically (``live.expire_snapshots_every``
commits); this command is for an extra pass, e.g. before a reconcile of a long-running table.

Exit codes: 0 done, 2 maintenance failed, 3 an invalid job file.
"""

from __future__ import annotations

import json
import logging

import click

from coordinator.core.jobspec import load_job

log = logging.getLogger(__name__)


def register(group: click.Group) -> None:
    """Add the ``maintain`` command to ``group``."""

    @group.command("maintain")
    @click.argument("job_file", type=click.Path(dir_okay=False))
    @click.option("--output", type=click.Choice(["text", "json"]), default="text",
                  show_default=True)  # fmt: skip
    @click.option(
        "--min-age",
        type=click.FloatRange(min=0),
        default=60.0,
        show_default=True,
        help="Never expire snapshots/versions younger than this many seconds (running readers).",
    )
    def maintain(job_file: str, output: str, min_age: float) -> None:
        """Compact small files, then expire old snapshots (keeps live.keep_snapshots)."""
        from coordinator.service import maintain_table

        spec = load_job(job_file)
        counts = maintain_table(spec, min_age_s=min_age)
        if output == "json":
            click.echo(json.dumps({"job": spec.job_id, **counts}, sort_keys=True))
        else:
            click.echo(f"job={spec.job_id} " + " ".join(f"{k}={v}" for k, v in counts.items()))
