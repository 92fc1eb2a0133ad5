"""One root exception for seamline, with per-area subclasses and exit codes.

Messages name ids as ``key=value``, say "expected X, found Y" where it applies, and say what
to do next. ``transient`` marks errors a retry may cure; everything else is terminal.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes, one per outcome (stable: scripts depend on them)."""

    OK = 0
    NOT_RECONCILED = 1  # ran, but reconciliation found a difference (or was not reached)
    ERROR = 2  # an error stopped the work
    CONFIG = 3  # the job file or the command line is wrong; nothing was written
    SOURCE_DATA_LOSS = 4  # retention removed offsets the plan needs
    PARTIAL = 5  # some slices failed after all retries; the rest are committed
    USAGE = 64
    CANCELLED = 130


class SeamlineError(Exception):
    """Root of every error seamline raises on purpose."""

    exit_code: ExitCode = ExitCode.ERROR
    transient: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}; {hint}" if hint else message)


class ConfigError(SeamlineError):
    """The job file or a command-line value is invalid. Nothing has been written."""

    exit_code = ExitCode.CONFIG


class BrokerError(SeamlineError):
    """The Kafka broker could not be provided, started, stopped or reached."""


class ServiceError(SeamlineError):
    """A local service (the Iceberg REST catalog server) could not be provided or started."""


class SourceError(SeamlineError):
    """Reading a bounded source (Kafka range, archive files) failed."""


class SourceDataLossError(SourceError):
    """Retention removed offsets that the plan owns (``log_start`` moved past a planned start)."""

    exit_code = ExitCode.SOURCE_DATA_LOSS


class StateError(SeamlineError):
    """The state store is unreachable, has an unknown schema version, or holds bad data."""


class StaleEpochError(StateError):
    """A coordinator with an older epoch tried to mark a slice or commit."""


class WriterError(SeamlineError):
    """A table write failed."""


class CommitConflictError(WriterError):
    """The commit was certainly not applied (a concurrent commit won); refresh and retry."""

    transient = True


class CommitOutcomeUnknownError(WriterError):
    """The commit may or may not have landed: look the token up before doing anything else."""

    transient = True


class DuplicateKeyError(WriterError):
    """A merge batch holds the same business key more than once."""


class SliceAssertionError(SeamlineError):
    """A ``[[backfill.assert]]`` check failed on a slice: the slice was not committed.

    Terminal: the same data fails the same check again, so it is not retried within a run.
    """


class LiveError(SeamlineError):
    """The live consumer failed."""


class ReconcileError(SeamlineError):
    """Reconciliation could not run (not: it ran and found a difference)."""


class CancelledError(SeamlineError):
    """The user cancelled the run (SIGINT/SIGTERM)."""

    exit_code = ExitCode.CANCELLED


class LeaseHeldError(StateError):
    """Another live coordinator holds the job's lease (two coordinators on one job)."""
