"""``seamline wait JOB [RUN]``: follow a detached run to its end, exit with its exit code."""

from __future__ import annotations

import json
import sys

import click

from coordinator.core.jobspec import load_job


def register(group: click.Group) -> None:
    """Add ``wait`` to ``group``."""

    @group.command()
    @click.argument("job_file", type=click.Path(dir_okay=False))
    @click.argument("run_id", required=False)
    @click.option("--output", type=click.Choice(["text", "json"]), default="text",
                  show_default=True)  # fmt: skip
    @click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=None,
                  help="Give up (exit 2) after this many seconds; default: wait for the end.")  # fmt: skip
    def wait(job_file: str, run_id: str | None, output: str, timeout_s: float | None) -> None:
        """Follow a detached run (default: the newest) to its end, printing its progress
        lines, and exit with the run's exit code (2 if it died without one)."""
        from coordinator.run.detach import follow, wait_exit_code

        job = load_job(job_file)
        emit = (lambda _line: None) if output == "json" else click.echo
        run = follow(job, run_id, emit, timeout_s=timeout_s)
        code = wait_exit_code(run)
        if output == "json":
            click.echo(json.dumps(run.to_json()))
        elif run.state == "died":
            click.echo(
                f"run_id={run.run_id} died without an exit code (pid={run.pid}); "
                f"see {run.log_path}; run `seamline run {job_file}` again to resume",
                err=True,
            )
        else:
            click.echo(f"run_id={run.run_id} ended exit_code={code}", err=True)
        sys.exit(code)
