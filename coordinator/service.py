"""Open the table the live consumer writes to, from a job.

The live side opens the same sink as the history side (``backfill.sinks.registry.open_sink``): one
table code path per format. Live appends are conditional on the table's live offsets
(:mod:`backfill.sinks.iceberg.live`, :mod:`backfill.sinks.lance.live`), and the sink's ``maintain()`` runs
every ``live.expire_snapshots_every`` commits keeping ``live.keep_snapshots`` versions.
"""

from __future__ import annotations

import logging

from pyiceberg.catalog import Catalog

from backfill.sinks.iceberg.sink import IcebergSink
from backfill.sinks.registry import open_catalog, open_sink
from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import TableSink

log = logging.getLogger(__name__)


def _catalog(job: JobSpec) -> Catalog:
    """The job's Iceberg catalog (kept for callers of the former live-only helper)."""
    if job.table.identifier is None:
        raise ConfigError("key=table.identifier: iceberg needs 'identifier' and 'catalog_uri'")
    return open_catalog(job)


def open_live_sink(job: JobSpec, *, min_snapshot_age_s: float = 60.0) -> TableSink:
    """The live sink of ``job``'s table, created first if missing (shared table code).

    Iceberg: the table's manifest-merge and metadata-cleanup properties are ensured too.
    """
    sink = open_sink(job, min_age_s=min_snapshot_age_s)
    sink.ensure_table()
    if isinstance(sink, IcebergSink):
        sink.live_table().ensure_maintenance_properties()
    return sink
