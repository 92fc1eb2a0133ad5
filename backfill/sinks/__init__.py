"""Table code of both sides (history slices and live micro-batches), one folder per format.

This package is the sink family's loader (pyiceberg-style): :data:`SINKS` maps
``[table] format`` to a factory that imports its format folder only when called, so
``import backfill.sinks.common`` imports no table format. A new format is one folder plus
one line in :data:`SINKS`. :func:`open_sink` turns a job into the format's sink; the
composition root (``coordinator.service``) is its caller.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from backfill.sinks.common import MaintenancePolicy
    from coordinator.core.ports import TableSink

log = logging.getLogger(__name__)

SinkFactory = Callable[[JobSpec, "MaintenancePolicy"], "TableSink"]


def open_catalog(job: JobSpec) -> Catalog:
    """The job's pyiceberg catalog through ``load_catalog`` (secrets are read here, never
    logged).

    ``[table] catalog`` (or the older flat keys: a SQL catalog) gives the type and properties;
    ``[table.storage]`` adds the ``s3.*`` FileIO properties. A warehouse without a scheme is a
    path relative to the job file, given as a file URI.
    """
    from pyiceberg.catalog import load_catalog

    spec = job.table.catalog_spec()
    if spec is None:
        raise ConfigError(
            "key=table.catalog: iceberg needs a catalog",
            hint='catalog = { type = "sql", uri = "sqlite:///catalog.db" }',
        )
    spec.check_uri()
    wh = job.table.catalog_warehouse()
    if wh is not None and "://" not in wh:
        wh = job.resolve(wh).as_uri()
    props = {**job.table.storage.iceberg_properties(), **spec.load_properties(wh)}
    if job.table.storage.endpoint is not None:
        s3_checksums_when_required()
    if spec.type == "rest":
        _quiet_double_metadata_delete()
    log.debug("opening catalog name=%s type=%s", spec.name, spec.type)
    return load_catalog(spec.name, **props)


class _ServerDeletedMetadata(logging.Filter):
    """A REST catalog server deletes old metadata files itself (the table's
    ``write.metadata.delete-after-commit.enabled``); pyiceberg's client then tries the same
    files and warns "Failed to delete metadata file" on every commit. Those lines say nothing
    (the files are gone, as intended): shown at DEBUG only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(
            "Failed to delete metadata file"
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _quiet_double_metadata_delete() -> None:
    target = logging.getLogger("pyiceberg.catalog")
    if not any(isinstance(f, _ServerDeletedMetadata) for f in target.filters):
        target.addFilter(_ServerDeletedMetadata())


def s3_checksums_when_required() -> None:
    """Send S3 request checksums only where the S3 API requires them.

    The AWS SDK inside pyarrow adds CRC64-NVME checksums to uploads by default; S3-compatible
    servers (S3Proxy, older MinIO) reject the unknown header with HTTP 400. Set only when unset,
    so ``AWS_REQUEST_CHECKSUM_CALCULATION`` in the environment still wins.
    """
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")


def lance_location(job: JobSpec) -> tuple[str, dict[str, str] | None]:
    """The Lance dataset URI of ``job`` and its object-store options (``[table.storage]``;
    None without one). A path without a scheme is relative to the job file."""
    if job.table.uri is None:
        raise ConfigError("key=table.uri: lance needs a dataset path or URI")
    uri = job.table.uri if "://" in job.table.uri else str(job.resolve(job.table.uri))
    options = job.table.storage.lance_options() if job.table.storage.is_set() else None
    return uri, options


def maintenance_policy(job: JobSpec, min_age_s: float = 60.0) -> MaintenancePolicy:
    """Snapshot/version maintenance of the job's table, from its ``[live]`` settings."""
    from backfill.sinks.common import MaintenancePolicy

    return MaintenancePolicy(
        keep_versions=job.live.keep_snapshots,
        every_commits=job.live.expire_snapshots_every,
        min_age_s=min_age_s,
    )


def _delete_when(job: JobSpec) -> tuple[str, object] | None:
    marker = job.table.delete_when
    return None if marker is None else marker.marker()


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
        delete_when=_delete_when(job),
        maintenance=maintenance,
    )


def _lance(job: JobSpec, maintenance: MaintenancePolicy) -> TableSink:
    from backfill.sinks.lance.sink import LanceSink

    uri, options = lance_location(job)
    return LanceSink(
        uri,
        job.schema_.arrow_schema(),
        job.schema_.event_time,
        mode=job.backfill.mode,
        key=job.table.key,
        version=job.table.version,
        strict_keys=job.table.strict_keys,
        delete_when=_delete_when(job),
        maintenance=maintenance,
        storage_options=options,
        host_lock=job.table.storage.commit_lock == "host",
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


__all__ = [
    "SINKS",
    "SinkFactory",
    "lance_location",
    "maintenance_policy",
    "open_catalog",
    "open_sink",
    "s3_checksums_when_required",
]
