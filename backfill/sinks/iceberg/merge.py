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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import AlwaysFalse, AlwaysTrue, BooleanExpression
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table, Transaction

from backfill.sinks import common, merge
from backfill.sinks.iceberg.internals import stage_append, write_data_files
from backfill.sinks.scopes import ice_and, ice_eq, ice_ge, ice_in, ice_le, ice_or, ice_true

log = logging.getLogger(__name__)

_PRUNE_LIMIT = 200  # pyiceberg's IN_PREDICATE_LIMIT for metrics pruning
_READERS = 4  # data files read at once by a merge plan


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


@dataclass(frozen=True)
class MergeFiles:
    """What one merge attempt commits: data files added and data files it replaces."""

    add: list[DataFile]
    remove: list[DataFile]


def _bounds_may_hold(task: FileScanTask, field_id: int, ftype: Any, keys: np.ndarray) -> bool:
    """Whether a data file's key statistics (min/max) can hold one of the sorted ``keys``;
    ``True`` when the file has no statistics for the key."""
    lower = (task.file.lower_bounds or {}).get(field_id)
    upper = (task.file.upper_bounds or {}).get(field_id)
    if lower is None or upper is None:
        return True
    lo, hi = from_bytes(ftype, lower), from_bytes(ftype, upper)
    i = int(np.searchsorted(keys, lo, side="left"))
    return i < len(keys) and keys[i] <= hi


def candidate_files(
    table: Table, rows: pa.Table, keys: tuple[str, ...], scope: BooleanExpression | None
) -> list[FileScanTask]:
    """Scan tasks of every data file that may hold a row of ``rows``' keys, or of ``scope``.

    One integer key column: the files are planned by the keys' RANGE (binding a range costs
    nothing; pyiceberg binds an IN once per manifest entry, ~40 us per value each time, which
    at thousands of keys and hundreds of files took minutes per commit), then each file's
    min/max statistics are checked against the sorted keys here (a binary search per file).
    Other keys: the structural key filter.
    """
    bounds = key_range(keys, rows) if len(keys) == 1 else None
    by_keys = bounds or key_filter(keys, rows)
    tasks = table.scan(row_filter=by_keys).plan_files()
    column = rows[keys[0]] if len(keys) == 1 else None
    if column is not None and pa.types.is_integer(column.type) and column.null_count == 0:
        field = table.schema().find_field(keys[0])
        wanted = np.unique(column.to_numpy())
        tasks = [t for t in tasks if _bounds_may_hold(t, field.field_id, field.field_type, wanted)]
    if scope is None:
        return list(tasks)
    seen = {t.file.file_path for t in tasks}
    own = [t for t in table.scan(row_filter=scope).plan_files() if t.file.file_path not in seen]
    return [*tasks, *own]


def _read_files(table: Table, tasks: list[FileScanTask]) -> list[pa.Table]:
    """Every row of each task's data file (in task order), read in parallel."""
    scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
    if len(tasks) <= 1:
        return [scan.to_table([t]) for t in tasks]
    # a pool of our own: ``to_table`` runs on pyiceberg's shared pool, and waiting on that
    # pool from its own threads deadlocks once every thread waits
    with ThreadPoolExecutor(min(_READERS, len(tasks)), "seamline-merge-read") as pool:
        return list(pool.map(lambda t: scan.to_table([t]), tasks))


def plan_files(
    table: Table,
    rows: pa.Table,
    rule: merge.MergeRule,
    sort_by: str | None = None,
    scope: tuple[BooleanExpression, pc.Expression] | None = None,
) -> MergeFiles:
    """The data files one merge attempt adds and replaces, planned on ``table``'s snapshot.

    Copy-on-write at file level: the files that may hold the batch's keys (and those of the
    slice's own ``scope``: a re-written history slice replaces it, so its rows are not
    versions to compare) are read whole; every row of the batch's keys is a version to
    compare; the winners are written, and each file that held a replaced row (a row of the
    batch's keys, or of ``scope``) is replaced by a file of its other rows, unchanged (lineage
    included). Files without such a row are left alone.
    """
    if rows.num_rows == 0:
        return MergeFiles([], [])
    tasks = candidate_files(table, rows, rule.key, scope and scope[0])
    files = _read_files(table, tasks)
    hit = merge.arrow_key_filter(rows, rule.key)
    drop = hit if scope is None else hit | scope[1]
    found = [f.filter(hit) for f in files]
    existing = merge.outside(
        pa.concat_tables(found) if found else rows.schema.empty_table(), scope and scope[1]
    )
    decided = merge.plan(rows, existing, rule)
    out, remove = [decided.rows], []
    for task, data in zip(tasks, files, strict=True):
        kept = merge.outside(data, drop)  # a null predicate (archive lineage) keeps the row
        if kept.num_rows == data.num_rows:
            continue  # nothing of this file is replaced
        remove.append(task.file)
        if kept.num_rows:
            out.append(kept.select(decided.rows.column_names).cast(decided.rows.schema))
    log.debug(
        "merge plan: batch=%d files_read=%d existing=%d write=%d files_replaced=%d",
        rows.num_rows, len(tasks), existing.num_rows, decided.rows.num_rows, len(remove),
    )  # fmt: skip
    table_out = pa.concat_tables(out)
    if sort_by is not None and table_out.num_rows > 1:  # one contiguous run per partition
        table_out = table_out.sort_by([(sort_by, "ascending")]).combine_chunks()
    added = write_data_files(table, table_out) if table_out.num_rows else []
    return MergeFiles(added, remove)


def stage_merge(
    tx: Transaction,
    table: Table,
    rows: pa.Table,
    rule: merge.MergeRule,
    props: dict[str, str],
    sort_by: str | None = None,
    scope: tuple[BooleanExpression, pc.Expression] | None = None,
) -> None:
    """Plan against ``table`` (the snapshot ``tx`` is based on) and stage the merge: one
    snapshot that replaces exactly the planned files (pyiceberg refuses it if one of them is
    no longer in that snapshot) and adds the new ones."""
    planned = plan_files(table, rows, rule, sort_by, scope)
    if not planned.remove:
        stage_append(tx, planned.add, props)
        return
    with tx.update_snapshot(snapshot_properties=props).overwrite() as rewrite:
        for data_file in planned.remove:
            rewrite.delete_data_file(data_file)
        for data_file in planned.add:
            rewrite.append_data_file(data_file)
