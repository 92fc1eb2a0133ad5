"""Table code of both sides (history slices and live micro-batches), one folder per format.

This package is the sink family's loader (pyiceberg-style): :data:`SINKS` maps
``[table] format`` to a factory that imports its format folder only when called, so
``import backfill.sinks.common`` imports no table format. A new format is one folder plus
one line in :data:`SINKS`. :func:`open_sink` turns a job into the format's sink; the
composition root (``coordinator.service``) is its caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog

    from backfill.sinks.common import MaintenancePolicy
    from coordinator.core.ports import TableSink

SinkFactory = Callable[[JobSpec, "MaintenancePolicy"], "TableSink"]


def open_catalog(job: JobSpec) -> SqlCatalog:
    """The job's pyiceberg SQL catalog (secrets are read here and never logged).

    A warehouse without a scheme is a path relative to the job file, given as a file URI.
    """
    from pyiceberg.catalog.sql import SqlCatalog

    t = job.table
    if t.catalog_uri is None:
        raise ConfigError("key=table.catalog_uri: iceberg needs a catalog URI")
    props = {k: v.get_secret_value() for k, v in t.catalog_properties.items()}
    if t.warehouse is not None:
        wh = t.warehouse
        props["warehouse"] = wh if "://" in wh else job.resolve(wh).as_uri()
    return SqlCatalog(t.catalog_name, uri=t.catalog_uri.get_secret_value(), **props)


def maintenance_policy(job: JobSpec, min_age_s: float = 60.0) -> MaintenancePolicy:
    """Snapshot/version maintenance of the job's table, from its ``[live]`` settings."""
    from backfill.sinks.common import MaintenancePolicy

    return MaintenancePolicy(
        keep_versions=job.live.keep_snapshots,
        every_commits=job.live.expire_snapshots_every,
        min_age_s=min_age_s,
    )


def _iceberg(job: JobSpec, maintenance: MaintenancePolicy) -> TableSink:
    from backfill.sinks.iceberg.sink import IcebergSink

    if job.table.identifier is None:
        raise ConfigError("key=table.identifier: iceberg needs namespace.table")
    return IcebergSink(
        open_catalog(job),
        job.table.identifier,
        job.schema_.arrow_schema(),
        job.schema_.event_time,
        partition_by=job.table.partition_by,
        mode=job.backfill.mode,
        key=job.table.key,
        version=job.table.version,
        strict_keys=job.table.strict_keys,
        maintenance=maintenance,
    )


def _lance(job: JobSpec, maintenance: MaintenancePolicy) -> TableSink:
    from backfill.sinks.lance.sink import LanceSink

    if job.table.uri is None:
        raise ConfigError("key=table.uri: lance needs a dataset path or URI")
    uri = job.table.uri if "://" in job.table.uri else str(job.resolve(job.table.uri))
    return LanceSink(
        uri,
        job.schema_.arrow_schema(),
        job.schema_.event_time,
        mode=job.backfill.mode,
        key=job.table.key,
        version=job.table.version,
        strict_keys=job.table.strict_keys,
        maintenance=maintenance,
    )


SINKS: dict[str, SinkFactory] = {"iceberg": _iceberg, "lance": _lance}


def open_sink(job: JobSpec, *, min_age_s: float = 60.0) -> TableSink:
    """A sink for ``job.table`` in ``job.backfill.mode`` (the table is not created here).

    ``min_age_s``: snapshots/versions younger than this are never removed by maintenance.
    """
    factory = SINKS.get(job.table.format)
    if factory is None:
        raise ConfigError(
            f"key=table.format: expected one of {sorted(SINKS)}, found {job.table.format!r}",
            hint="set [table] format to a supported table format",
        )
    return factory(job, maintenance_policy(job, min_age_s))


__all__ = ["SINKS", "SinkFactory", "maintenance_policy", "open_catalog", "open_sink"]
