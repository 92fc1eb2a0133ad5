"""Open the job's table as a ``TableSink`` (Iceberg over a SQL catalog, or Lance)."""

from __future__ import annotations

from pyiceberg.catalog.sql import SqlCatalog

from backfill.iceberg_sink import IcebergSink
from backfill.lance_sink import LanceSink
from coordinator.errors import ConfigError
from coordinator.jobspec import JobSpec
from coordinator.ports import TableSink


def open_catalog(job: JobSpec) -> SqlCatalog:
    """The job's pyiceberg SQL catalog (secrets are read here and never logged)."""
    t = job.table
    if t.catalog_uri is None:
        raise ConfigError("key=table.catalog_uri: iceberg needs a catalog URI")
    props = {k: v.get_secret_value() for k, v in t.catalog_properties.items()}
    if t.warehouse is not None:
        props["warehouse"] = t.warehouse
    return SqlCatalog(t.catalog_name, uri=t.catalog_uri.get_secret_value(), **props)


def open_sink(job: JobSpec) -> TableSink:
    """A sink for ``job.table`` in ``job.backfill.mode`` (the table is not created here)."""
    schema = job.schema_.arrow_schema()
    event_time = job.schema_.event_time
    mode = job.backfill.mode
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
        )
    if job.table.uri is None:
        raise ConfigError("key=table.uri: lance needs a dataset path or URI")
    uri = job.table.uri if "://" in job.table.uri else str(job.resolve(job.table.uri))
    return LanceSink(uri, schema, event_time, mode=mode, key=job.table.key)
