"""``seamline live JOB``: run the live consumer from the cut onwards, exactly once into the table.

Start offsets: the table's committed live offsets (read by the consumer itself on every
assignment), else the ``hwm`` of the job's cut from the state store. SIGTERM/SIGINT flush the
in-flight batch, commit it and exit 0. Progress (committed offset, high watermark, lag,
quarantined) is written to the state store's live progress, which ``seamline status`` shows.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import click

from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec, load_job

log = logging.getLogger(__name__)


def _parse_partitions(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        parts = tuple(sorted({int(p) for p in text.split(",") if p.strip()}))
    except ValueError:
        raise ConfigError(
            f"key=--partitions: expected comma-separated integers, found {text!r}"
        ) from None
    if not parts or min(parts) < 0:
        raise ConfigError(f"key=--partitions: expected partitions >= 0, found {text!r}")
    return parts


def _check_port(port: int | None) -> int | None:
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(
            f"key=--metrics-port: expected a TCP port in 0..65535, found {port}",
            hint="pass a free port such as 9108, or 0 to let the system pick one",
        )
    return port


def _install_stop_handlers() -> threading.Event:
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: flushing and stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stop


def run_live(
    job: JobSpec,
    metrics_port: int | None,
    partitions: tuple[int, ...] | None,
    engine: str = "confluent",
    metrics_host: str = "127.0.0.1",
) -> dict[str, int]:
    """Run until SIGTERM/SIGINT; returns the final counters."""
    from coordinator.service import run_live as run_live_service

    stop = _install_stop_handlers()
    return run_live_service(
        job, stop, metrics_port=metrics_port, metrics_host=metrics_host, partitions=partitions,
        engine=engine,
    )


@click.command("live")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus /metrics here.")
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address /metrics binds to (0.0.0.0 exposes it to the network).",
)
@click.option("--partitions", default=None, help="Explicit assignment, e.g. 0,2 (no group).")
@click.option(
    "--engine",
    type=click.Choice(["confluent", "faust"]),
    default="confluent",
    show_default=True,
    help="confluent-kafka consumer, or a Faust worker (group offsets set from the table).",
)
def live(
    job_file: str,
    metrics_port: int | None,
    metrics_host: str,
    partitions: str | None,
    engine: str,
) -> None:
    """Consume the job's topic from the cut onwards into the table, exactly once."""
    job = load_job(job_file)
    if engine == "faust" and partitions is not None:
        raise ConfigError("key=--partitions: the faust engine assigns through its group")
    port = _check_port(metrics_port)
    counters = run_live(job, port, _parse_partitions(partitions), engine, metrics_host)
    click.echo(" ".join(f"{k}={v}" for k, v in counters.items()))


def register(group: click.Group) -> None:
    """Add ``live`` to the ``seamline`` group."""
    group.add_command(live)
