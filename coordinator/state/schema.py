"""The state store's versioned schema (SQLAlchemy Core tables, one ``MetaData``).

Bump :data:`SCHEMA_VERSION` with every change and add the step to :data:`MIGRATIONS`; a
store upgrades older versions it knows (one transaction) and refuses newer ones instead of
guessing.

Versions: 1 the first schema; 2 adds ``leases`` (one coordinator per job holds the lease); 3
adds ``runs`` (detached runs: ``seamline run --detach``); 4 indexes ``slices`` by status and
by plan position (``status`` and resume page through a plan of millions of slices by index,
never loading it whole) and adds ``plan_inputs`` (a fingerprint of what the plan was made from:
the drift check compares it instead of planning again).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

SCHEMA_VERSION = 4


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, found {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("installed_at", UtcDateTime, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

cuts = sa.Table(
    "cuts",
    metadata,
    sa.Column("job_id", sa.String(128), sa.ForeignKey("jobs.job_id"), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("taken_at", UtcDateTime, nullable=False),
    sa.Column("watermark_ms", sa.BigInteger, nullable=True),
    sa.Column("plan_hash", sa.String(64), nullable=True),
)

cut_partitions = sa.Table(
    "cut_partitions",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("log_start", sa.BigInteger, nullable=False),
    sa.Column("hwm", sa.BigInteger, nullable=False),
    sa.ForeignKeyConstraint(["job_id", "epoch"], ["cuts.job_id", "cuts.epoch"]),
)

slices = sa.Table(
    "slices",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("slice_id", sa.String(255), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("scope", sa.JSON, nullable=False),
    sa.Column("files", sa.JSON, nullable=False),
    sa.Column("est_rows", sa.BigInteger, nullable=False),
    sa.Column("est_bytes", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=True),
    sa.Column("quarantined", sa.BigInteger, nullable=True),
    sa.Column("checksum", sa.JSON, nullable=True),
    sa.Column("commit_token", sa.JSON, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("started_at", UtcDateTime, nullable=True),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("duration_s", sa.Float, nullable=True),
    sa.Column("total_duration_s", sa.Float, nullable=False),
    sa.ForeignKeyConstraint(["job_id", "epoch"], ["cuts.job_id", "cuts.epoch"]),
)

#: Slices of one plan by status, in plan order: the to-do list, the failed ones; and, as it
#: also holds the columns ``status`` sums, the per-status totals read from the index alone.
slices_by_status = sa.Index(
    "ix_slices_status",
    slices.c.job_id,
    slices.c.epoch,
    slices.c.status,
    slices.c.position,
    slices.c.est_rows,
    slices.c.rows,
    slices.c.duration_s,
)
#: Slices of one plan in plan order (the keyset of every paged read).
slices_by_position = sa.Index(
    "ix_slices_position", slices.c.job_id, slices.c.epoch, slices.c.position
)

plan_inputs = sa.Table(
    "plan_inputs",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("plan_hash", sa.String(64), nullable=False),
)

live_progress = sa.Table(
    "live_progress",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("committed_offset", sa.BigInteger, nullable=False),
    sa.Column("high_watermark", sa.BigInteger, nullable=False),
    sa.Column("lag", sa.BigInteger, nullable=False),
    sa.Column("quarantined", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

reconcile_results = sa.Table(
    "reconcile_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(128), nullable=False, index=True),
    sa.Column("run_at", UtcDateTime, nullable=False),
    sa.Column("reconciled", sa.Boolean, nullable=False),
    sa.Column("document", sa.JSON, nullable=False),
)

pauses = sa.Table(
    "pauses",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(128), nullable=False, index=True),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("owner_id", sa.String(64), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("acquired_at", UtcDateTime, nullable=False),
    sa.Column("heartbeat_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("job_id", sa.String(128), nullable=False, index=True),
    sa.Column("pid", sa.Integer, nullable=True),  # the detached process (None until started)
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("log_path", sa.Text, nullable=False),
    sa.Column("args", sa.JSON, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("ended_at", UtcDateTime, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
)

#: ``{from_version: tables and indexes added by the step to from_version + 1}`` (additive
#: steps only).
MIGRATIONS: dict[int, tuple[sa.Table | sa.Index, ...]] = {
    1: (leases,),
    2: (runs,),
    3: (slices_by_status, slices_by_position, plan_inputs),
}
