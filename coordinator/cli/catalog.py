"""``seamline catalog start|status|stop``: a local Apache Iceberg REST catalog (no Docker).

The server is Iceberg's own REST catalog fixture (JDBC catalog on SQLite behind it, a file
warehouse in the data dir), bound to 127.0.0.1. Exit codes: 0 success; ``status`` exits 1
when the catalog is not serving; errors exit with the error's own code (2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

DEFAULT_DATA_DIR = Path(".seamline") / "catalog"
NOT_SERVING_EXIT = 1

_data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Directory holding the catalog's database, warehouse, logs and catalog.json.")


def register(group: click.Group) -> None:
    """Add the ``catalog`` commands to ``group``."""

    @group.group()
    def catalog() -> None:
        """Run a local Apache Iceberg REST catalog for development and tests."""

    catalog.add_command(start)
    catalog.add_command(status)
    catalog.add_command(stop)


@click.command()
@_data_dir_option
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port on 127.0.0.1 (default: the recorded one, else a free one).")
@click.option("--warehouse", default=None,
              help="Warehouse URI (default: DATA_DIR/warehouse on local files); an s3:// one "
              "needs --s3-data-dir.")
@click.option("--s3-data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data dir of a running `seamline s3` server: the warehouse's S3 endpoint "
              "and keys (the bucket of --warehouse is created).")
def start(data_dir: Path, port: int | None, warehouse: str | None,
          s3_data_dir: Path | None) -> None:
    """Start the catalog in the background (or reuse it) and print ``uri=http://HOST:PORT``."""
    from backfill.sinks.iceberg.rest_server.local import start_catalog

    properties = None
    if s3_data_dir is not None or (warehouse or "").startswith("s3://"):
        properties = _s3_properties(s3_data_dir, warehouse)
    server = start_catalog(data_dir, port=port, warehouse=warehouse, properties=properties)
    click.echo(f"uri={server.uri}")
    click.echo(f"warehouse={server.warehouse}")


def _s3_properties(s3_data_dir: Path | None, warehouse: str | None) -> dict[str, str]:
    from backfill.sinks.s3_server.local import create_bucket, s3_status
    from coordinator.core.errors import ConfigError

    if s3_data_dir is None or warehouse is None or not warehouse.startswith("s3://"):
        raise ConfigError(
            "key=--warehouse/--s3-data-dir: expected both, an s3:// warehouse and the data dir "
            "of a running `seamline s3` server",
            hint="seamline catalog start --warehouse s3://seamline/warehouse "
            "--s3-data-dir .seamline/s3",
        )
    state, server = s3_status(s3_data_dir)
    if state != "serving" or server is None:
        raise ConfigError(
            f"key=--s3-data-dir: expected a serving S3 server in {s3_data_dir}, found {state}",
            hint=f"seamline s3 start --data-dir {s3_data_dir}",
        )
    create_bucket(server, warehouse.removeprefix("s3://").split("/")[0])
    return server.iceberg_properties()


@click.command()
@_data_dir_option
def status(data_dir: Path) -> None:
    """Print ``uri=...`` and exit 0 if the catalog serves; exit 1 otherwise."""
    from backfill.sinks.iceberg.rest_server.local import catalog_status

    probe = catalog_status(data_dir)
    if probe.state == "serving" and probe.server is not None:
        click.echo(f"uri={probe.server.uri}")
        return
    if probe.state == "not-serving" and probe.server is not None:
        click.echo(f"catalog pid={probe.server.pid} is running but not serving at "
                   f"{probe.server.uri}; see {data_dir / 'logs' / 'server.log'}", err=True)
    else:
        click.echo(f"no catalog running for data_dir={data_dir}; start one with: "
                   f"seamline catalog start --data-dir {data_dir}", err=True)
    sys.exit(NOT_SERVING_EXIT)


@click.command()
@_data_dir_option
def stop(data_dir: Path) -> None:
    """Stop the catalog (SIGTERM, then SIGKILL); a no-op when it is not running."""
    from backfill.sinks.iceberg.rest_server.local import stop_catalog

    pids = stop_catalog(data_dir)
    click.echo(f"stopped pid={','.join(map(str, pids))}" if pids else "not running")
