"""``seamline reprocess JOB --from DATE --to DATE [--transform module:function]``.

Re-derives an event-time range (topic offsets found by record timestamp below the cut, and
archive buckets) with a fixed transform while live keeps writing, then reconciles with it.
Exit codes: 0 reconciled, 1 not reconciled, 5 some slices failed, 2/3 errors as everywhere.
"""

from __future__ import annotations

import json
import sys

import click


def register(group: click.Group) -> None:
    """Add the ``reprocess`` command to ``group``."""

    @group.command("reprocess")
    @click.argument("job_file", type=click.Path(dir_okay=False))
    @click.option("--from", "start", required=True, help="Start (inclusive), ISO date/time, UTC.")
    @click.option("--to", "end", required=True, help="End (exclusive), ISO date/time, UTC.")
    @click.option("--transform", default=None, help="The fixed transform, module:function.")
    @click.option("--output", type=click.Choice(["text", "json"]), default="text")
    @click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=10.0)
    def reprocess_cmd(
        job_file: str,
        start: str,
        end: str,
        transform: str | None,
        output: str,
        timeout_s: float,
    ) -> None:
        """Overwrite [FROM, TO) with a fixed transform, then reconcile with it."""
        from coordinator.core.jobspec import load_job
        from coordinator.run.progress import progress_for
        from coordinator.run.reprocess import parse_when
        from coordinator.service import reprocess

        job = load_job(job_file)
        out = reprocess(
            job, parse_when(start), parse_when(end), transform=transform, timeout_s=timeout_s,
            progress=progress_for(label="reprocess"),
        )  # fmt: skip
        doc = out.to_json()
        if output == "json":
            click.echo(json.dumps(doc))
        else:
            click.echo(
                f"job={job.job_id} reprocess_run={out.run_id} [{doc['from']}, {doc['to']}) "
                f"transform={out.transform}: {out.committed} slices written, "
                f"{out.skipped} already done, {out.rows:,} rows, failed={list(out.failed)}"
            )
            rec = doc["reconcile"]
            if rec is not None:
                counts = " ".join(
                    f"{k}={rec[k]}" for k in ("lost", "duplicated", "phantom", "overlap", "gap")
                )
                click.echo(f"reconciled={doc['reconciled']} {counts}")
        sys.exit(int(out.exit_code))
