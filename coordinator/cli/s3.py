"""``seamline s3 start|status|stop``: a local S3-compatible server (S3Proxy on files, no Docker).

Prints the endpoint and the access key id; the generated secret key stays in
``<data-dir>/s3.json`` (mode 0600) and is never printed. Exit codes: 0 success; ``status``
exits 1 when the server is not serving; errors exit with the error's own code (2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

DEFAULT_DATA_DIR = Path(".seamline") / "s3"
NOT_SERVING_EXIT = 1

_data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_DIR,
    show_default=True, help="Directory holding the buckets, logs and s3.json (with the keys).")


def register(group: click.Group) -> None:
    """Add the ``s3`` commands to ``group``."""

    @group.group()
    def s3() -> None:
        """Run a local S3-compatible server (S3Proxy) for development and tests."""

    s3.add_command(start)
    s3.add_command(status)
    s3.add_command(stop)


def _describe(endpoint: str, access_key_id: str, data_dir: Path) -> None:
    click.echo(f"endpoint={endpoint}")
    click.echo(f"access_key_id={access_key_id}")
    click.echo(f"secret_access_key_file={data_dir.expanduser().resolve() / 's3.json'}")


@click.command()
@_data_dir_option
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port on 127.0.0.1 (default: the recorded one, else a free one).")
@click.option("--bucket", "buckets", multiple=True, help="Create this bucket (repeatable).")
def start(data_dir: Path, port: int | None, buckets: tuple[str, ...]) -> None:
    """Start the server in the background (or reuse it) and print how to reach it."""
    from backfill.sinks.s3_server.local import create_bucket, start_s3

    server = start_s3(data_dir, port=port)
    for bucket in buckets:
        click.echo(f"bucket={create_bucket(server, bucket)}")
    _describe(server.endpoint, server.access_key_id, data_dir)


@click.command()
@_data_dir_option
def status(data_dir: Path) -> None:
    """Print the endpoint and exit 0 if the server answers; exit 1 otherwise."""
    from backfill.sinks.s3_server.local import s3_status

    state, server = s3_status(data_dir)
    if state == "serving" and server is not None:
        _describe(server.endpoint, server.access_key_id, data_dir)
        return
    if state == "not-serving" and server is not None:
        click.echo(f"S3 server pid={server.pid} is running but not answering at "
                   f"{server.endpoint}; see {data_dir / 'logs' / 'server.log'}", err=True)
    else:
        click.echo(f"no S3 server running for data_dir={data_dir}; start one with: "
                   f"seamline s3 start --data-dir {data_dir}", err=True)
    sys.exit(NOT_SERVING_EXIT)


@click.command()
@_data_dir_option
def stop(data_dir: Path) -> None:
    """Stop the server (SIGTERM, then SIGKILL); a no-op when it is not running."""
    from backfill.sinks.s3_server.local import stop_s3

    pids = stop_s3(data_dir)
    click.echo(f"stopped pid={','.join(map(str, pids))}" if pids else "not running")
