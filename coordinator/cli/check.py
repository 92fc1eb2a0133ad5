"""``seamline check JOB`` (validate a job and what it needs, writing nothing) and
``seamline schema`` (the job file's JSON schema, for editors).

``check`` prints one ``ok``/``FAIL`` line per step and exits 0 when every step passed, 3 when
the job file is wrong (as everywhere) and 2 when something it needs cannot be reached.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from coordinator.core.errors import ConfigError, ExitCode, SeamlineError
from coordinator.core.jobspec import JobSpec, load_job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One check: what was checked, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str
    code: ExitCode = ExitCode.OK

    def __post_init__(self) -> None:
        if self.ok != (self.code == ExitCode.OK):
            raise ValueError(f"step={self.name}: expected ok only with exit code 0")


def _step(name: str, probe: Callable[[], str]) -> Step:
    try:
        return Step(name, True, probe())
    except ConfigError as exc:
        return Step(name, False, str(exc), ExitCode.CONFIG)
    except SeamlineError as exc:
        return Step(name, False, str(exc), ExitCode.ERROR)
    except Exception as exc:  # a library's own error: unreachable, permission, ...
        return Step(name, False, f"{type(exc).__name__}: {exc}", ExitCode.ERROR)


def _broker(job: JobSpec, timeout_s: float) -> str:
    from coordinator.plan.cut import read_cut
    from coordinator.run.prepare import refuse_unowned_history

    reading = read_cut(job, timeout_s, watermark=False)
    refuse_unowned_history(job, reading)
    held = sum(p.hwm - p.log_start for p in reading.partitions)
    return (f"{job.stream.bootstrap} topic={job.stream.topic} "
            f"partitions={len(reading.partitions)} offsets below now={held:,}")  # fmt: skip


def _archives(job: JobSpec) -> str:
    from coordinator.plan.facts import scan_archives

    if not job.history.archive:
        return "none configured"
    files = scan_archives(job)
    return f"{len(files)} files, {sum(f.rows for f in files):,} rows"


def _table(job: JobSpec) -> str:
    t = job.table
    if t.format == "lance":
        path = job.resolve(str(t.uri)) if "://" not in str(t.uri) else None
        if path is None or path.exists():
            return f"lance {t.uri} ({'exists' if path else 'remote, not probed'})"
        return f"lance {path} (created by the first write; folder {_writable(path.parent)})"
    return _catalog(job)


def _catalog(job: JobSpec) -> str:
    spec = job.table.catalog_spec()
    assert spec is not None  # the job's cross-checks ensure it
    if spec.type != "sql" or spec.uri is None:
        return _any_catalog(job, spec.type)
    import sqlalchemy as sa

    from coordinator.state.base import safe_url

    url = spec.uri.get_secret_value()
    shown = safe_url(url)
    if url.startswith("sqlite"):
        db = Path(sa.engine.make_url(url).database or "")
        if not db.exists():
            return f"iceberg catalog {shown} (created by the first write; folder {_writable(db.parent)})"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:  # reads only: no catalog tables are created
            conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()
    return f"iceberg catalog {shown} reachable, table {job.table.identifier}"


def _any_catalog(job: JobSpec, kind: str) -> str:
    """Open a non-SQL catalog (REST answers its config endpoint) and list the namespaces."""
    from coordinator.service import open_catalog
    from coordinator.state.base import safe_url

    catalog = open_catalog(job)
    catalog.list_namespaces()
    uri = catalog.properties.get("uri")
    where = f" {safe_url(uri)}" if uri else ""
    return f"iceberg {kind} catalog{where} reachable, table {job.table.identifier}"


def _writable(folder: Path) -> str:
    import os

    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"path={existing}: expected a writable folder, found it read-only")
    return "writable"


def _state(job: JobSpec, job_file: str) -> str:
    from coordinator.run.prepare import open_existing, plan_drift

    store = open_existing(job)
    if store is None:
        return "none yet (created by cut, plan or run)"
    with store:
        cut = store.get_cut(job.job_id)
    if cut is None:
        return f"{store.url}: no cut yet"
    drift = plan_drift(job, job_file)
    if drift is not None:
        raise ConfigError(drift)
    return f"{store.url}: epoch={cut.epoch} plan={'stored' if cut.plan_hash else 'none'}"


def run_checks(job_file: str, timeout_s: float) -> list[Step]:
    """Every check of ``seamline check`` in order (the job file first)."""
    from coordinator.run.prepare import validate_job

    try:
        job = load_job(job_file)
        validate_job(job)
    except ConfigError as exc:
        return [Step("job file", False, str(exc), ExitCode.CONFIG)]
    steps = [Step("job file", True, f"{job_file} job={job.job_id} table={job.table.format}")]
    steps.append(_step("broker", lambda: _broker(job, timeout_s)))
    steps.append(_step("archive", lambda: _archives(job)))
    steps.append(_step("table", lambda: _table(job)))
    steps.append(_step("state", lambda: _state(job, job_file)))
    return steps


def register(group: click.Group) -> None:
    """Add ``check`` and ``schema`` to ``group``."""

    @group.command()
    @click.argument("job_file", type=click.Path(dir_okay=False))
    @click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=10.0,
                  show_default=True, help="Seconds to wait for the broker.")  # fmt: skip
    def check(job_file: str, timeout_s: float) -> None:
        """Validate the job file and reach its broker, archive, table and state; writes nothing."""
        from coordinator.core.logs import redact

        steps = run_checks(job_file, timeout_s)
        for s in steps:
            click.echo(f"{'ok  ' if s.ok else 'FAIL'} {s.name}: {redact(s.detail)}")
        sys.exit(int(max((s.code for s in steps), default=ExitCode.OK)))

    @group.command()
    def schema() -> None:
        """Print the job file's JSON schema (for editors: taplo, VS Code Even Better TOML)."""
        from coordinator.core.jobref import job_file_schema

        click.echo(json.dumps(job_file_schema(), indent=2))
