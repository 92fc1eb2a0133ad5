"""Lineage columns every row written by seamline carries (DESIGN §2)."""

from __future__ import annotations

from typing import Final

import pyarrow as pa

PARTITION: Final = "_kafka_partition"
OFFSET: Final = "_kafka_offset"
SOURCE: Final = "_seamline_source"  # "kafka" | "archive"
SIDE: Final = "_seamline_side"  # "backfill" | "live": who wrote the row (overlap detection)

COLUMNS: Final = (PARTITION, OFFSET, SOURCE, SIDE)

FIELDS: Final = (
    pa.field(PARTITION, pa.int32(), nullable=True),  # null for archive rows
    pa.field(OFFSET, pa.int64(), nullable=True),  # null for archive rows
    pa.field(SOURCE, pa.string(), nullable=False),
    pa.field(SIDE, pa.string(), nullable=False),
)


def with_lineage(schema: pa.Schema) -> pa.Schema:
    """``schema`` plus the lineage columns at the end; refuses user columns that collide."""
    clash = sorted(set(schema.names) & set(COLUMNS))
    if clash:
        raise ValueError(f"user columns {clash} collide with seamline's lineage columns")
    return pa.schema([*schema, *FIELDS])
