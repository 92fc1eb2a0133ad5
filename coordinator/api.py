"""The public Python API, importable as ``seamline`` (``coordinator/seamline_import.py``).

``import seamline`` gives the entry points the ``seamline`` command uses, their result
types, the exit codes and the error root; everything else is internal. A minimal run::

    import seamline

    job = seamline.load_job("orders.toml")
    outcome = seamline.run_job(job)          # cut, plan, slices, then reconcile
    assert outcome.exit_code == seamline.ExitCode.OK, outcome.to_json()

The distribution's top-level packages (``coordinator``, ``stream``, ``backfill``,
``reconcile``) are internal: import them only through this module.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from coordinator.core.errors import (
    ConfigError,
    ExitCode,
    ReconcileError,
    SeamlineError,
    SourceDataLossError,
    StateError,
)
from coordinator.core.jobspec import JobSpec, load_job, parse_job
from coordinator.run.orchestrate import JobOutcome
from coordinator.run.progress import LineProgress, NullProgress, ProgressSink, progress_for
from coordinator.run.reprocess import ReprocessOutcome
from coordinator.run.runner import RunReport, StopSignal
from coordinator.service import reconcile_and_record as reconcile_job
from coordinator.service import reprocess, run_job, run_live
from reconcile.model import ReconcileReport


def _version() -> str:
    try:
        return version("seamline")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


__version__ = _version()

__all__ = [
    "ConfigError",
    "ExitCode",
    "JobOutcome",
    "JobSpec",
    "LineProgress",
    "NullProgress",
    "ProgressSink",
    "ReconcileError",
    "ReconcileReport",
    "ReprocessOutcome",
    "RunReport",
    "SeamlineError",
    "SourceDataLossError",
    "StateError",
    "StopSignal",
    "__version__",
    "load_job",
    "parse_job",
    "progress_for",
    "reconcile_job",
    "reprocess",
    "run_job",
    "run_live",
]
