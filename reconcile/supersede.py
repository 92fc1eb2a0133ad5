"""Merge mode, source side: drop the source versions a later version of the same key replaced.

In merge mode the table holds one row per key, the newest by the declared order
(:func:`reconcile.keys.superseded`). Before a unit's source side is summed, every source row
that is not in the table and whose key the table holds from a LATER record is taken out and
counted as ``superseded``; what remains must match the table row for row (the checksums), so
with key uniqueness this proves each key's row is its newest source version. A missing row
whose key is held only by an earlier record stays in, and shows up as lost or different.

``present`` is what the table holds: the unit's own table rows (the per-unit path) or the key
index of the whole table (the one-pass path, no table scan per unit).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core import lineage
from reconcile.keys import superseded, superseded_rows

LINEAGE = [lineage.PARTITION, lineage.OFFSET]


def _like(rows: pa.Table, cols: Sequence[str], schema: pa.Schema) -> pa.Table:
    """``rows[cols]`` cast to the types ``schema`` gives them (joins need equal key types)."""
    out = rows.select(list(cols))
    want = pa.schema([schema.field(c) for c in cols])
    return out if out.schema == want else out.cast(want)


def kafka_superseded(
    rows: pa.Table,
    present: pa.Table,
    index: pa.Table,
    key: Sequence[str],
    version: str | None,
) -> pa.Table:
    """Distinct ``(_kafka_partition, _kafka_offset)`` of the Kafka ``rows`` the table does
    not hold and a later record of the same key superseded."""
    if rows.num_rows == 0:
        return rows.select(LINEAGE).slice(0, 0)
    held = _like(present, LINEAGE, index.schema)
    cols = list(dict.fromkeys([*key, *([version] if version else []), *lineage.COLUMNS]))
    left = _like(rows, cols, index.schema)
    missing = left.join(held, LINEAGE, join_type="left anti")
    return superseded_rows(missing, index, key, version)


def drop_lineage(rows: pa.Table, gone: pa.Table) -> pa.Table:
    """``rows`` without the ``(partition, offset)`` pairs of ``gone``."""
    if gone.num_rows == 0:
        return rows
    gone = _like(gone, LINEAGE, rows.schema)
    kept = rows.join(gone, LINEAGE, join_type="left anti")
    return kept.select(rows.column_names).cast(rows.schema)


def archive_superseded(
    rows: pa.Table,
    present: pa.Table,
    index: pa.Table,
    key: Sequence[str],
    match: Sequence[str],
    version: str | None,
) -> tuple[pa.Table, int]:
    """Archive ``rows`` minus those the table does not hold (matched on ``match``: the key,
    plus event time when ``present`` is the whole table's index) and a later record of the
    same key superseded; and how many were dropped."""
    if rows.num_rows == 0 or index.num_rows == 0:
        return rows, 0
    archive = present
    if lineage.SOURCE in present.column_names:
        archive = present.filter(pc.equal(present[lineage.SOURCE], "archive"))
    cols = list(dict.fromkeys([*key, *match, *([version] if version else [])]))
    left = _like(rows, cols, index.schema)
    held = _like(archive, list(match), index.schema)
    missing = left.join(held, list(match), join_type="left anti")
    if missing.num_rows == 0:
        return rows, 0
    n = missing.num_rows
    fill = {
        lineage.SOURCE: pa.array(["archive"] * n, index.schema.field(lineage.SOURCE).type),
        lineage.PARTITION: pa.nulls(n, index.schema.field(lineage.PARTITION).type),
        lineage.OFFSET: pa.nulls(n, index.schema.field(lineage.OFFSET).type),
    }
    for name, values in fill.items():
        if name not in missing.column_names:
            missing = missing.append_column(name, values)
    gone = superseded(missing, index, key, version)
    if gone.num_rows == 0:
        return rows, 0
    drop = _like(gone, key, rows.schema).group_by(list(key)).aggregate([])
    kept = rows.join(drop, list(key), join_type="left anti")
    kept = kept.select(rows.column_names).cast(rows.schema)
    return kept, rows.num_rows - kept.num_rows
