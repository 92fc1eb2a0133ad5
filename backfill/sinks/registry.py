"""Open the job's table as a ``TableSink`` (Iceberg over a SQL catalog, or Lance).

Both sides (history and live) open the table here, so they share one code path per format.
"""

from __future__ import annotations

from pyiceberg.catalog.sql import SqlCatalog

from backfill.sinks.common import MaintenancePolicy
from backfill.sinks.iceberg.sink import IcebergSink
from backfill.sinks.lance.sink import LanceSink
from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import TableSink


def open_catalog(job: JobSpec) -> SqlCatalog:
    """The job's pyiceberg SQL catalog (secrets are read here and never logged).

    A warehouse without a scheme is a path relative to the job file, given as a file URI.
    """
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
    return MaintenancePolicy(
        keep_versions=job.live.keep_snapshots,
        every_commits=job.live.expire_snapshots_every,
        min_age_s=min_age_s,
    )


def open_sink(job: JobSpec, *, min_age_s: float = 60.0) -> TableSink:
    """A sink for ``job.table`` in ``job.backfill.mode`` (the table is not created here).

    ``min_age_s``: snapshots/versions younger than this are never removed by maintenance.
    """
    schema = job.schema_.arrow_schema()
    event_time = job.schema_.event_time
    mode = job.backfill.mode
    maintenance = maintenance_policy(job, min_age_s)
    if job.table.format == "iceberg":
        if job.table.identifier is None:
            raise ConfigError("key=table.identifier: iceberg needs namespace.table")
        return IcebergSink(
            open_catalog(job),
            job.table.identifier,
            schema,
            event_time,
            partition_by=job.table.partition_by,
            mode=mode,
            key=job.table.key,
            version=job.table.version,
            strict_keys=job.table.strict_keys,
            maintenance=maintenance,
        )
    if job.table.uri is None:
        raise ConfigError("key=table.uri: lance needs a dataset path or URI")
    uri = job.table.uri if "://" in job.table.uri else str(job.resolve(job.table.uri))
    return LanceSink(
        uri,
        schema,
        event_time,
        mode=mode,
        key=job.table.key,
        version=job.table.version,
        strict_keys=job.table.strict_keys,
        maintenance=maintenance,
    )
