"""Lineage columns every row written by seamline carries (DESIGN §2)."""

from __future__ import annotations

from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

PARTITION: Final = "_kafka_partition"
OFFSET: Final = "_kafka_offset"
SOURCE: Final = "_seamline_source"  # "kafka" | "archive"
SIDE: Final = "_seamline_side"  # "backfill" | "live": who wrote the row (overlap detection)
#: Merge mode with a declared delete marker only: true on a key's tombstone row (readers
#: filter ``NOT _seamline_deleted``; the row stays so an older version cannot revive the key).
DELETED: Final = "_seamline_deleted"
DELETED_FIELD: Final = pa.field(DELETED, pa.bool_(), nullable=False)

COLUMNS: Final = (PARTITION, OFFSET, SOURCE, SIDE)

FIELDS: Final = (
    pa.field(PARTITION, pa.int32(), nullable=True),  # null for archive rows
    pa.field(OFFSET, pa.int64(), nullable=True),  # null for archive rows
    pa.field(SOURCE, pa.string(), nullable=False),
    pa.field(SIDE, pa.string(), nullable=False),
)


def with_lineage(schema: pa.Schema, *, tombstones: bool = False) -> pa.Schema:
    """``schema`` plus the lineage columns at the end (and :data:`DELETED` when the job
    declares tombstones); refuses user columns that collide."""
    clash = sorted(set(schema.names) & {*COLUMNS, DELETED})
    if clash:
        raise ValueError(f"user columns {clash} collide with seamline's lineage columns")
    return pa.schema([*schema, *FIELDS, *([DELETED_FIELD] if tombstones else [])])


def mark_deleted(rows: pa.Table, field: str, equals: object) -> pa.Table:
    """``rows`` with :data:`DELETED` set where ``field`` equals ``equals`` (a null field is
    not a tombstone); the one definition the writers and the reconciler share. With
    ``field`` = :data:`DELETED` (null-value tombstones, set by the decoder) rows without the
    column (archive rows) are no tombstones."""
    if field == DELETED and DELETED not in rows.column_names:
        return rows.append_column(DELETED_FIELD, pa.array([False] * rows.num_rows, pa.bool_()))
    if field not in rows.column_names:
        raise ValueError(f"expected the delete marker column {field!r}, found {rows.column_names}")
    column = rows[field]
    hit = pc.fill_null(pc.equal(column, pa.scalar(equals, column.type)), False)
    if DELETED in rows.column_names:
        rows = rows.drop_columns([DELETED])
    return rows.append_column(DELETED_FIELD, hit)
