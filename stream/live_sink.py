"""Open the table the live consumer writes to, from a job.

The table is created by the shared sink code (``backfill.sinks.open_sink(job).ensure_table()``)
so both sides write the same table. Iceberg live appends go through
:class:`~stream.live_iceberg.IcebergLiveTable`, whose commits are conditional on the table's
live offsets (see there); it reads and writes the same ``seamline.live.offset.<p>`` properties.
"""

from __future__ import annotations

import logging
from typing import Any

from coordinator.errors import ConfigError
from coordinator.jobspec import JobSpec
from stream.live import LiveSink
from stream.live_iceberg import IcebergLiveTable

log = logging.getLogger(__name__)


def _catalog(job: JobSpec) -> Any:
    from pyiceberg.catalog.sql import SqlCatalog

    t = job.table
    if t.catalog_uri is None or t.identifier is None:
        raise ConfigError("key=table: iceberg needs 'identifier' and 'catalog_uri'")
    props = {k: v.get_secret_value() for k, v in t.catalog_properties.items()}
    if t.warehouse is not None:
        wh = t.warehouse
        props["warehouse"] = wh if "://" in wh else job.resolve(wh).as_uri()
    return SqlCatalog(t.catalog_name, uri=t.catalog_uri.get_secret_value(), **props)


def open_live_sink(job: JobSpec, *, min_snapshot_age_s: float = 60.0) -> LiveSink:
    """The live sink of ``job``'s table, created first with the shared table code if missing.

    Iceberg: an :class:`IcebergLiveTable` (offset-conditional appends, flat commit cost).
    Lance: the shared ``backfill.sinks`` Lance sink.
    """
    from backfill.sinks import open_sink

    shared = open_sink(job)
    shared.ensure_table()
    if job.table.format != "iceberg":
        return shared
    table = _catalog(job).load_table(str(job.table.identifier))
    sink = IcebergLiveTable(
        table,
        keep_snapshots=job.live.keep_snapshots,
        expire_every=job.live.expire_snapshots_every,
        min_snapshot_age_s=min_snapshot_age_s,
        sort_by=job.schema_.event_time,
    )
    sink.ensure_maintenance_properties()
    return sink
