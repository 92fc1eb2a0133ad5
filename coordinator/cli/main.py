"""The ``seamline`` command group.

Each area registers its commands from its own module (``cli_<area>.py``); this file only
assembles them, configures logging and maps errors to exit codes.
"""

from __future__ import annotations

import importlib
import logging
import re
import shlex
import sys
import traceback
from pathlib import Path

import click

from coordinator.core.errors import ExitCode, SeamlineError

log = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[2]
_MAX_DETAIL = 300

# Modules that each define ``register(group: click.Group) -> None``.
_COMMAND_MODULES: tuple[str, ...] = ("coordinator.cli.broker", "coordinator.cli.catalog", "coordinator.cli.s3", "coordinator.cli.live", "coordinator.cli.jobs", "coordinator.cli.reconcile", "coordinator.cli.demo", "coordinator.cli.reprocess", "coordinator.cli.maintain", "coordinator.cli.check", "coordinator.cli.wait")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="seamline", prog_name="seamline", message="%(prog)s %(version)s")
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


def _command() -> str:
    """The subcommand on the command line (``seamline`` when there is none)."""
    name = next((a for a in sys.argv[1:] if a in cli.commands), None)
    return f"seamline {name}" if name else "seamline"


def _where(exc: BaseException) -> str:
    """``path:line (function)`` of the deepest seamline frame the exception passed through."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if Path(f.filename).resolve().is_relative_to(_ROOT) and ".venv" not in f.filename
    ]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {Path(f.filename).resolve().relative_to(_ROOT)}:{f.lineno} ({f.name})"


def unexpected_error_line(exc: BaseException) -> str:
    """The one ``error:`` line for an exception seamline did not raise on purpose.

    It names the command, the exception type, its first message line and the seamline code
    it came through; credentials are redacted.
    """
    from coordinator.core.logs import redact

    detail = (str(exc).strip().splitlines() or [""])[0][:_MAX_DETAIL]
    debug = log.isEnabledFor(logging.DEBUG)
    hint = "" if debug else "; rerun with --log-level debug for the traceback"
    return redact(
        f"error: {_command()} failed: unexpected {type(exc).__name__}"
        f"{': ' + detail if detail else ''}{_where(exc)}{hint}"
    )


def _job_argument(argv: list[str]) -> str | None:
    """The job file given on the command line: the first argument after the subcommand
    that names an existing file (``None`` when there is none)."""
    names = [i for i, a in enumerate(argv) if a in cli.commands]
    if not names:
        return None
    return next((a for a in argv[names[0] + 1:] if not a.startswith("-") and Path(a).is_file()),
                None)  # fmt: skip


def error_text(exc: SeamlineError, argv: list[str]) -> str:
    """The error line's text: a hint's ``JOB`` placeholder becomes the job file the command
    was given (shell-quoted), so the suggested command pastes as is.

    >>> from coordinator.core.errors import StateError
    >>> error_text(StateError("no cut", hint="run `seamline run JOB` first"), ["run", "-h"])
    'no cut; run `seamline run JOB` first'
    """
    text = str(exc)
    job = _job_argument(argv)
    if not exc.hint or job is None or not text.endswith(exc.hint):
        return text
    hint = re.sub(r"\bJOB\b", lambda _: shlex.quote(job), exc.hint)
    return text[: len(text) - len(exc.hint)] + hint


def main() -> None:
    """Console-script entry point: run the group and map every error to an exit code.

    Seamline errors exit with their own code; any other exception is unexpected and exits 2
    (``ExitCode.ERROR``) with one ``error:`` line, never 1, which means "ran and found
    differences". The traceback is logged (redacted) only under ``--log-level debug``.
    """
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
        from coordinator.core.logs import redact

        # messages may wrap library text
        click.echo(f"error: {redact(error_text(exc, sys.argv[1:]))}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # the one place an unexpected error becomes exit 2
        log.debug("%s failed", _command(), exc_info=exc)
        click.echo(unexpected_error_line(exc), err=True)
        sys.exit(ExitCode.ERROR)
    # with standalone_mode=False, click returns the code of ctx.exit(n) instead of raising
    sys.exit(rc if isinstance(rc, int) else 0)
