"""The ``seamline`` command group.

Each area registers its commands from its own module (``cli_<area>.py``); this file only
assembles them, configures logging and maps errors to exit codes.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from coordinator.core.errors import ExitCode, SeamlineError

log = logging.getLogger(__name__)

# Modules that each define ``register(group: click.Group) -> None``.
_COMMAND_MODULES: tuple[str, ...] = ("coordinator.cli.broker", "coordinator.cli.catalog", "coordinator.cli.s3", "coordinator.cli.live", "coordinator.cli.jobs", "coordinator.cli.reconcile", "coordinator.cli.demo", "coordinator.cli.reprocess")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option("--log-json", is_flag=True, help="Emit logs as JSON lines on stderr.")
def cli(log_level: str, log_json: bool) -> None:
    """Seamline: load history under a live Kafka stream, idempotent, bounded, reconciled."""
    from coordinator.core.logs import configure_logging

    configure_logging(log_level.upper(), json_lines=log_json)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(cli)


_register_all()


def main() -> None:
    """Console-script entry point: run the group and map seamline errors to exit codes."""
    try:
        rc = cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(ExitCode.CANCELLED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except SeamlineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    # with standalone_mode=False, click returns the code of ctx.exit(n) instead of raising
    sys.exit(rc if isinstance(rc, int) else 0)
