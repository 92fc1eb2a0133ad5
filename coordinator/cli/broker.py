"""``seamline broker start|status|stop|smoke``: a local Apache Kafka broker (KRaft, no Docker).

Exit codes: 0 success; ``status`` exits 1 when the broker is not serving; errors exit with the
error's own code (2 for a broker error).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

DEFAULT_DATA_DIR = Path(".seamline") / "broker"
NOT_SERVING_EXIT = 1

_data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_DIR,
    show_default=True, help="Directory holding the broker's config, data, logs and broker.json.")


def register(group: click.Group) -> None:
    """Add the ``broker`` commands to ``group``."""

    @group.group()
    def broker() -> None:
        """Run a local Apache Kafka broker (KRaft) for development and tests."""

    broker.add_command(start)
    broker.add_command(status)
    broker.add_command(stop)
    broker.add_command(smoke)


@click.command()
@_data_dir_option
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Client port on 127.0.0.1 (default: the recorded one, else a free one).")
def start(data_dir: Path, port: int | None) -> None:
    """Start the broker in the background (or reuse it) and print ``bootstrap=HOST:PORT``."""
    from stream.broker.provide import start_local

    local = start_local(data_dir, port=port)
    click.echo(f"bootstrap={local.bootstrap}")


@click.command()
@_data_dir_option
def status(data_dir: Path) -> None:
    """Print ``bootstrap=HOST:PORT`` and exit 0 if the broker serves; exit 1 otherwise."""
    from stream.broker.provide import local_status

    probe = local_status(data_dir)
    if probe.state == "serving" and probe.broker is not None:
        click.echo(f"bootstrap={probe.broker.bootstrap}")
        return
    if probe.state == "not-serving" and probe.broker is not None:
        click.echo(f"broker pid={probe.broker.pid} is running but not serving at "
                   f"{probe.broker.bootstrap}; see {data_dir / 'logs' / 'server.log'}", err=True)
    else:
        click.echo(f"no broker running for data_dir={data_dir}; start one with: "
                   f"seamline broker start --data-dir {data_dir}", err=True)
    sys.exit(NOT_SERVING_EXIT)


@click.command()
@_data_dir_option
def stop(data_dir: Path) -> None:
    """Stop the broker (SIGTERM, then SIGKILL); a no-op when it is not running."""
    from stream.broker.provide import stop_local

    pids = stop_local(data_dir)
    click.echo(f"stopped pid={','.join(map(str, pids))}" if pids else "not running")


@click.command()
@_data_dir_option
@click.option("--bootstrap", default=None, metavar="HOST:PORT", envvar="KAFKA_BOOTSTRAP",
              help="Use this broker instead of the local one (env: KAFKA_BOOTSTRAP).")
def smoke(data_dir: Path, bootstrap: str | None) -> None:
    """Start (or reuse) the broker, then produce one message and read it back by offset."""
    from stream.broker.admin import round_trip
    from stream.broker.provide import start_local

    if not bootstrap:
        bootstrap = start_local(data_dir).bootstrap
        click.echo(f"the broker keeps running; stop it with: seamline broker stop "
                   f"--data-dir {data_dir}", err=True)
    click.echo(f"bootstrap={bootstrap}")
    result = round_trip(bootstrap)
    click.echo(f"round_trip=ok topic={result.topic} partition={result.partition} "
               f"offset={result.offset} create_ms={result.create_s * 1000:.0f} "
               f"produce_ms={result.produce_s * 1000:.0f} "
               f"consume_ms={result.consume_s * 1000:.0f} total_ms={result.total_s * 1000:.0f}")
