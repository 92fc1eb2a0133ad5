"""Open the table the live consumer writes to, from a job.

Iceberg jobs get an :class:`~stream.live_iceberg.IcebergLiveTable` (created with the job's
schema plus lineage columns when missing). The shared ``backfill.sinks.open_sink`` is used
instead as soon as it provides ``append_live``/``live_offsets`` for the format.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from coordinator.errors import ConfigError
from coordinator.jobspec import JobSpec
from coordinator.lineage import with_lineage
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


def _ensure_iceberg_table(job: JobSpec, catalog: Any) -> Any:
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
    from pyiceberg.transforms import DayTransform, HourTransform

    ident = str(job.table.identifier)
    try:
        return catalog.load_table(ident)
    except NoSuchTableError:
        pass
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(ident.rsplit(".", 1)[0])
    table = catalog.create_table_if_not_exists(
        ident, schema=with_lineage(job.schema_.arrow_schema())
    )
    by = job.table.partition_by
    if by != "none" and table.spec().is_unpartitioned():
        field = job.schema_.event_time
        with table.update_spec() as upd:
            upd.add_field(
                field, DayTransform() if by == "day" else HourTransform(), f"{field}_{by}"
            )
    return catalog.load_table(ident)


def open_live_sink(job: JobSpec, *, min_snapshot_age_s: float = 60.0) -> LiveSink:
    """The live sink of ``job``'s table; raises ``ConfigError`` for unsupported formats."""
    if job.table.format != "iceberg":
        raise ConfigError(
            f"job={job.job_id}: expected table.format='iceberg' for the live consumer, "
            f"found {job.table.format!r}",
            hint="Lance live appends come with backfill.sinks.open_sink",
        )
    table = _ensure_iceberg_table(job, _catalog(job))
    sink = IcebergLiveTable(
        table,
        keep_snapshots=job.live.keep_snapshots,
        expire_every=job.live.expire_snapshots_every,
        min_snapshot_age_s=min_snapshot_age_s,
    )
    sink.ensure_maintenance_properties()
    return sink
