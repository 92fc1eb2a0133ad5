"""Iceberg side of merge by key (``backfill.sinks.merge``): read, decide, stage (DESIGN §4).

One attempt reads every table row of the batch's keys at the snapshot the transaction is based
on (a key filter built structurally, so archive rows with null lineage are found too; Iceberg
prunes data files by the key column's statistics and never opens files that cannot hold a
key), decides the winners in Arrow, writes the winners' data files and stages "delete the
replaced keys, add the files" in the caller's transaction.

The comparison is made against the versions present at commit time: the table carries
``commit.retry.num-retries = 0`` (``backfill.sinks.iceberg.live.NO_LIBRARY_RETRY``), so the
``AssertRefSnapshotId`` every pyiceberg snapshot producer sends makes the catalog refuse the
commit if anything landed since the read (``CommitFailedException``: certainly not applied),
and the caller re-plans on the new snapshot. pyiceberg's own retry would rebase the plan onto
the new head without re-reading, which is why it is off. On one host, merge writers of a table
in a local warehouse take turns through a file lock (:func:`merge_lock`), so history slices
and live batches do not starve each other with conflicts; remote warehouses rely on the
requirement and the retry policy (bounded, with jitter) alone.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import AlwaysFalse, BooleanExpression
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table, Transaction

from backfill.sinks import common, merge
from backfill.sinks.iceberg.internals import stage_overwrite, write_data_files
from backfill.sinks.scopes import ice_and, ice_eq, ice_ge, ice_in, ice_le, ice_or, ice_true

log = logging.getLogger(__name__)

_NO_MATCH = "Delete operation did not match any records"
_PRUNE_LIMIT = 200  # pyiceberg's IN_PREDICATE_LIMIT for metrics pruning
_REWRITE_FACTOR = 4  # a range rewrite re-adds at most this many rows per batch row


@contextlib.contextmanager
def merge_lock(table: Table) -> Iterator[None]:
    """Host-local turns for merge writers of a table in a local warehouse (no-op otherwise)."""
    loc = urlparse(table.location())
    if loc.scheme not in ("", "file"):
        yield
        return
    path = Path(unquote(loc.path).rstrip("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with common.dataset_lock(str(path), "merge"):
        yield


def key_filter(keys: tuple[str, ...], key_rows: pa.Table) -> BooleanExpression:
    """``key IN (...)`` or an OR of key-tuple equalities; always false for no keys."""
    if key_rows.num_rows == 0:
        out: BooleanExpression = AlwaysFalse()
        return out
    if len(keys) == 1:
        values = set(key_rows.column(keys[0]).to_pylist())
        if len(values) <= _PRUNE_LIMIT:
            return ice_in(keys[0], values)
        # pyiceberg's file pruning gives up on an IN of more than 200 values (every file
        # "might match", so a delete would read every data file): the key range prunes by
        # the files' min/max statistics first, the IN decides row by row.
        return ice_and(key_range(keys, key_rows) or ice_true(), ice_in(keys[0], values))
    return ice_or(
        *[
            ice_and(*[ice_eq(k, v) for k, v in zip(keys, t, strict=True)])
            for t in merge.key_values(key_rows, keys)
        ]
    )


def key_range(keys: tuple[str, ...], key_rows: pa.Table) -> BooleanExpression | None:
    """``lo <= key <= hi`` over ``key_rows`` (one key column, more than 200 keys), else
    ``None``: binding a large IN costs pyiceberg ~40 us per value, a range nothing."""
    if len(keys) != 1 or key_rows.num_rows <= _PRUNE_LIMIT:
        return None
    bounds = pc.min_max(key_rows[keys[0]])
    lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
    return ice_and(ice_ge(keys[0], lo), ice_le(keys[0], hi))


def plan_files(
    table: Table,
    rows: pa.Table,
    rule: merge.MergeRule,
    sort_by: str | None = None,
    scope: tuple[BooleanExpression, pc.Expression] | None = None,
) -> tuple[list[DataFile], BooleanExpression]:
    """Data files of the winners and the delete filter of the keys they replace; rows of the
    slice's own ``scope`` (Iceberg and Arrow forms; a re-written history slice) are not
    versions to compare (the caller deletes that scope too).

    A large batch reads its key RANGE (pruned by file statistics) and picks its keys in
    Arrow. When the range holds few other rows (at most :data:`_REWRITE_FACTOR` times the
    batch), the commit replaces the whole range and re-adds those rows unchanged (lineage
    included): a range delete costs nothing to bind, an IN of every key does.
    """
    if rows.num_rows == 0:
        return [], AlwaysFalse()
    bounds = key_range(rule.key, rows)
    found = table.scan(row_filter=bounds or key_filter(rule.key, rows)).to_arrow()
    hit = merge.arrow_key_filter(rows, rule.key)
    existing = merge.outside(found.filter(hit), scope and scope[1])
    decided = merge.plan(rows, existing, rule)
    log.debug(
        "merge plan: batch=%d read=%d existing=%d write=%d replace=%d",
        rows.num_rows, found.num_rows, existing.num_rows, decided.rows.num_rows,
        decided.replace.num_rows,
    )  # fmt: skip
    out, delete = decided.rows, None
    if bounds is not None and found.num_rows <= _REWRITE_FACTOR * rows.num_rows:
        others = merge.outside(found.filter(~hit), scope and scope[1])
        if others.num_rows:
            out = pa.concat_tables([out, others.select(out.column_names).cast(out.schema)])
        delete = bounds
    if sort_by is not None and out.num_rows > 1:  # one contiguous run per partition value
        out = out.sort_by([(sort_by, "ascending")]).combine_chunks()
    files = write_data_files(table, out) if out.num_rows else []
    return files, delete if delete is not None else key_filter(rule.key, decided.replace)


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
        if scope is not None:  # its own delete: OR-ing it with the keys loses archive rows
            tx.delete(delete_filter=scope[0], snapshot_properties=props)
        stage_overwrite(tx, replace, files, props)
