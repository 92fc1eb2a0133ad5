"""``seamline demo``: the README's first command (see :mod:`coordinator.demo.run`).

Steps and progress go to stderr; the final report (text or JSON) to stdout. Exit 0 only when
the final reconciliation passed. The first SIGINT/SIGTERM stops the backfill after its
in-flight slices and shuts everything down; a second one stops at once (still cleaning up).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click
from rich.console import Console
from rich.text import Text

from coordinator.run.progress import progress_for
from coordinator.run.runner import StopSignal


@contextmanager
def _signals(stop: StopSignal) -> Iterator[None]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.stop.is_set():
            raise KeyboardInterrupt(f"signal {signum}")
        stop.request()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def register(group: click.Group) -> None:
    """Add ``demo`` to ``group``."""

    @group.command()
    @click.option(
        "--table-format",
        type=click.Choice(["iceberg", "lance"]),
        default="iceberg",
        show_default=True,
        help="Where the orders land.",
    )
    @click.option(
        "--catalog",
        type=click.Choice(["sql", "rest"]),
        default="sql",
        show_default=True,
        help="Iceberg catalog: embedded SQL (SQLite), or a local REST catalog server.",
    )
    @click.option(
        "--storage",
        type=click.Choice(["local", "s3"]),
        default="local",
        show_default=True,
        help="Table storage: local files, or a bucket on a local S3 server (S3Proxy).",
    )
    @click.option(
        "--rows",
        type=click.IntRange(min=1000),
        default=200_000,
        show_default=True,
        help="History rows (three years: archive + topic).",
    )
    @click.option(
        "--workdir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("seamline-demo"),
        show_default=True,
        help="Folder for the job file, archive, table, state, broker and report.",
    )
    @click.option(
        "--output", type=click.Choice(["text", "json"]), default="text", show_default=True
    )
    @click.option(
        "--reprocess",
        is_flag=True,
        help="Afterwards, break one week with a buggy transform, detect it, repair it.",
    )
    @click.option(
        "--executor",
        type=click.Choice(["process", "ray"]),
        default="process",
        show_default=True,
        help="Where the backfill's slices run: local worker processes, or Ray tasks on a local "
        "Ray (needs seamline[ray]); the job file's [backfill] executor.",
    )
    def demo(table_format: str, catalog: str, storage: str, rows: int, workdir: Path,
             output: str, reprocess: bool, executor: str) -> None:
        """Onboard a live order stream end to end: archive + topic history under live traffic,
        reconciled. Starts (and stops) its own Kafka broker unless KAFKA_BOOTSTRAP is set."""
        from coordinator.demo.report import render_summary_text
        from coordinator.demo.run import DemoOptions, run_demo

        # commit retries against the live writer are expected here: not worth a warning line
        logging.getLogger("pyiceberg.table").setLevel(logging.ERROR)
        err = Console(stderr=True, highlight=False)
        options = DemoOptions(table_format, catalog, storage, rows, workdir,  # type: ignore[arg-type]
                              reprocess, executor=executor)  # type: ignore[arg-type]
        stop = StopSignal()
        with _signals(stop):
            result = run_demo(
                options,
                progress=progress_for(),
                stop=stop,
                say=lambda text: err.print(Text("> ", style="bold") + Text(text), soft_wrap=True),
            )
        if output == "json":
            click.echo(json.dumps(result.summary, indent=2))
        else:
            click.echo(render_summary_text(result.summary))
        sys.exit(int(result.exit_code))
