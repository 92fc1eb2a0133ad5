"""Open the job's table as a ``TableSink`` (Iceberg over any pyiceberg catalog, or Lance).

Both sides (history and live) open the table here, so they share one code path per format.
"""

from __future__ import annotations

import logging
import os

from pyiceberg.catalog import Catalog, load_catalog

from backfill.sinks.common import MaintenancePolicy
from backfill.sinks.iceberg.sink import IcebergSink
from backfill.sinks.lance.sink import LanceSink
from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import TableSink

log = logging.getLogger(__name__)


def open_catalog(job: JobSpec) -> Catalog:
    """The job's pyiceberg catalog via ``load_catalog`` (secrets are read here, never logged).

    ``[table] catalog`` (or the older flat keys, a SQL catalog) gives the type and properties;
    ``[table.storage]`` adds the ``s3.*`` FileIO properties. A warehouse without a scheme is a
    path relative to the job file, given as a file URI.
    """
    spec = job.table.catalog_spec()
    if spec is None:
        raise ConfigError("key=table.catalog: iceberg needs a catalog",
                          hint='catalog = { type = "sql", uri = "sqlite:///catalog.db" }')
    spec.check_uri()
    wh = job.table.catalog_warehouse()
    if wh is not None and "://" not in wh:
        wh = job.resolve(wh).as_uri()
    props = {**job.table.storage.iceberg_properties(), **spec.load_properties(wh)}
    if job.table.storage.endpoint is not None:
        _checksums_when_required()
    log.debug("opening catalog name=%s type=%s", spec.name, spec.type)
    return load_catalog(spec.name, **props)


def _checksums_when_required() -> None:
    """Send S3 request checksums only where the API requires them.

    The AWS SDK inside pyarrow adds CRC64-NVME checksums to uploads by default; S3-compatible
    servers (S3Proxy, older MinIO) reject the unknown header with HTTP 400. Set only when unset,
    so ``AWS_REQUEST_CHECKSUM_CALCULATION`` in the environment still wins.
    """
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")


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
            maintenance=maintenance,
        )
    if job.table.uri is None:
        raise ConfigError("key=table.uri: lance needs a dataset path or URI")
    uri = job.table.uri if "://" in job.table.uri else str(job.resolve(job.table.uri))
    return LanceSink(uri, schema, event_time, mode=mode, key=job.table.key, maintenance=maintenance)
