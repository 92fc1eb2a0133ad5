"""Iceberg side of merge by key (``backfill.sinks.merge``): read, decide, stage (DESIGN §4).

One attempt reads every table row of the batch's keys at the table's current snapshot (a key
filter built structurally, so archive rows with null lineage are found too; Iceberg prunes
data files by the key column's statistics), decides the winners in Arrow, writes the winners'
data files and stages "delete the replaced keys, add the files" in the caller's transaction.
The commit carries pyiceberg's ``AssertRefSnapshotId`` requirement: if anything committed
since the read, the attempt fails as a conflict and is re-planned on the new snapshot, so the
comparison is always made against the versions present at commit time.
"""

from __future__ import annotations

import logging
import warnings

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import AlwaysFalse, BooleanExpression
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table, Transaction

from backfill.sinks import merge
from backfill.sinks.iceberg.write import stage_overwrite, write_data_files
from backfill.sinks.scopes import ice_and, ice_eq, ice_in, ice_or

log = logging.getLogger(__name__)

_NO_MATCH = "Delete operation did not match any records"


def key_filter(keys: tuple[str, ...], key_rows: pa.Table) -> BooleanExpression:
    """``key IN (...)`` or an OR of key-tuple equalities; always false for no keys."""
    if key_rows.num_rows == 0:
        out: BooleanExpression = AlwaysFalse()
        return out
    if len(keys) == 1:
        return ice_in(keys[0], set(key_rows.column(keys[0]).to_pylist()))
    return ice_or(
        *[
            ice_and(*[ice_eq(k, v) for k, v in zip(keys, t, strict=True)])
            for t in merge.key_values(key_rows, keys)
        ]
    )


def plan_files(
    table: Table,
    rows: pa.Table,
    rule: merge.MergeRule,
    sort_by: str | None = None,
    scope: tuple[BooleanExpression, pc.Expression] | None = None,
) -> tuple[list[DataFile], BooleanExpression]:
    """Data files of the winners and the delete filter: the keys they replace, plus the
    slice's own ``scope`` (Iceberg and Arrow forms) when a history slice is re-written."""
    if rows.num_rows == 0:
        return [], scope[0] if scope is not None else AlwaysFalse()
    flt = key_filter(rule.key, rows)
    existing = merge.outside(table.scan(row_filter=flt).to_arrow(), scope and scope[1])
    decided = merge.plan(rows, existing, rule)
    log.debug(
        "merge plan: batch=%d existing=%d write=%d replace=%d",
        rows.num_rows,
        existing.num_rows,
        decided.rows.num_rows,
        decided.replace.num_rows,
    )
    out = decided.rows
    if sort_by is not None and out.num_rows > 1:  # one contiguous run per partition value
        out = out.sort_by([(sort_by, "ascending")]).combine_chunks()
    files = write_data_files(table, out) if out.num_rows else []
    replace = key_filter(rule.key, decided.replace)
    return files, replace if scope is None else ice_or(scope[0], replace)


def stage_merge(
    tx: Transaction,
    table: Table,
    rows: pa.Table,
    rule: merge.MergeRule,
    props: dict[str, str],
    sort_by: str | None = None,
    scope: tuple[BooleanExpression, pc.Expression] | None = None,
) -> None:
    """Plan against ``table`` (the snapshot ``tx`` is based on) and stage the merge."""
    files, replace = plan_files(table, rows, rule, sort_by, scope)
    with warnings.catch_warnings():  # a delete matching nothing is normal (new keys)
        warnings.filterwarnings("ignore", message=_NO_MATCH, category=UserWarning)
        stage_overwrite(tx, replace, files, props)
