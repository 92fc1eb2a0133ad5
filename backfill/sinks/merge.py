"""Merge by key under a declared order (DESIGN §4 "Merge"), shared by both engines and sides.

The table holds exactly one row per key. The winner among all versions of a key (rows already
in the table, whatever side or source wrote them, plus the batch being committed) is the
greatest by the *declared order*, never by commit timing:

1. the optional ``version`` column (e.g. ``updated_at``; null is oldest), then
2. the source: archive rows < Kafka records (``_seamline_source``: ``"archive" < "kafka"``),
3. the Kafka partition, then the offset within it (null for archive rows: oldest).

**Tombstones** (``delete_when``: a record whose marker column equals a declared value) are
versions of their key like any other: :meth:`MergeRule.mark` sets the ``_seamline_deleted``
lineage column from the marker, and a tombstone that wins is kept as the key's one row (the
*marker row*). So an older version arriving later (a history slice committing after a newer
live tombstone, a replayed slice) loses to it and cannot bring the key back; readers filter
``NOT _seamline_deleted``. A newer version after a tombstone wins and revives the key.

A full tie (the same record written twice, e.g. a retried slice) keeps the table's row. Inside
one batch, duplicate keys resolve by the same rule (the later row wins a full tie) unless the
rule is ``strict`` (then ``DuplicateKeyError``).

:func:`plan` is pure Arrow and vectorised: one stable sort of batch plus existing rows by
(key, order, origin) and a "last row of each key" mask. It returns the rows to write and the
keys whose table rows must be deleted in the same atomic commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property, reduce

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backfill.sinks import common
from coordinator.core import lineage
from coordinator.core.errors import WriterError

log = logging.getLogger(__name__)

_ORIGIN = "_seamline_merge_origin_"  # 0: the batch, 1: the table (wins a full tie)


@dataclass(frozen=True)
class MergeRule:
    """Key columns, an optional version column and whether in-batch duplicates are errors."""

    key: tuple[str, ...]
    version: str | None = None
    strict: bool = False
    delete_when: tuple[str, object] | None = None  # (column, value) marking a tombstone

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("expected at least one key column for a merge, found none")
        if self.version is not None and self.version in self.key:
            raise ValueError(f"expected a version column outside the key, found {self.version!r}")
        if self.delete_when is not None and self.delete_when[0] in (*self.key, self.version):
            raise ValueError(
                f"expected a delete marker column outside key and version, found "
                f"{self.delete_when[0]!r}"
            )

    def mark(self, rows: pa.Table) -> pa.Table:
        """``rows`` with ``_seamline_deleted`` from the declared marker (unchanged without
        one); called on both sides before the rows are conformed to the table schema."""
        if self.delete_when is None:
            return rows
        try:
            return lineage.mark_deleted(rows, *self.delete_when)
        except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise WriterError(
                f"merge rows: cannot read the delete marker ({exc})",
                hint="the transform must keep the [table] delete_when column",
            ) from None

    def check_table(self, schema: pa.Schema, where: str) -> None:
        """Refuse a table without the marker column when tombstones are declared (it was
        created before ``delete_when`` was set: the marker would be silently dropped)."""
        if self.delete_when is not None and lineage.DELETED not in schema.names:
            raise WriterError(
                f"{where}: expected a {lineage.DELETED} column for [table] delete_when, found "
                f"a table without it (created before tombstones were declared)",
                hint="load into a new table, or add the boolean column to this one first",
            )

    @property
    def order(self) -> tuple[str, ...]:
        """Columns deciding the winner, most significant first."""
        head = (self.version,) if self.version is not None else ()
        return (*head, lineage.SOURCE, lineage.PARTITION, lineage.OFFSET)


@dataclass(frozen=True)
class MergePlan:
    """What one merge commit does: delete every table row of ``replace`` keys, add ``rows``."""

    rows: pa.Table  # the batch's winners first, then the table's winners (rewritten)
    keys: pa.Table  # the batch's key columns
    fresh: int = -1  # how many leading ``rows`` are the batch's (-1: all of them)

    @property
    def batch_rows(self) -> pa.Table:
        """The winners taken from the batch."""
        return self.rows if self.fresh < 0 else self.rows.slice(0, self.fresh)

    @property
    def carried(self) -> pa.Table:
        """The table's winners, rewritten unchanged (lineage included)."""
        return self.rows.slice(self.rows.num_rows) if self.fresh < 0 else self.rows.slice(self.fresh)

    @cached_property
    def replace(self) -> pa.Table:
        """Distinct key tuples whose table rows are all replaced (computed when asked for)."""
        names = self.keys.column_names
        return self.keys.group_by(names).aggregate([])


def _check_keys(rows: pa.Table, rule: MergeRule) -> None:
    missing = [c for c in (*rule.key, *rule.order) if c not in rows.column_names]
    if missing:
        raise WriterError(f"merge rows: expected columns {missing}, found none")
    for k in rule.key:
        nulls = rows[k].null_count
        if nulls:
            raise WriterError(
                f"merge key={k}: expected a value in every row, found {nulls} null keys",
                hint="filter or quarantine keyless records in the transform",
            )


def _last_per_key(rows: pa.Table, keys: tuple[str, ...], order: tuple[str, ...]) -> pa.Table:
    """The greatest row of each key by ``order`` (stable: a later row wins a full tie)."""
    if rows.num_rows <= 1:
        return rows
    sort = [(c, "ascending", "at_start") for c in (*keys, *order)]
    ordered = rows.take(pc.sort_indices(rows, sort_keys=sort))
    n = ordered.num_rows
    changes = [pc.not_equal(ordered[k].slice(0, n - 1), ordered[k].slice(1)) for k in keys]
    last = reduce(pc.or_, changes)
    mask = pa.concat_arrays([_array(last), pa.array([True])])
    return ordered.filter(mask)


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def dedupe(rows: pa.Table, rule: MergeRule) -> pa.Table:
    """``rows`` with one row per key: the newest by the rule (strict: duplicates raise)."""
    _check_keys(rows, rule)
    if rule.strict:
        common.check_unique_keys(rows, rule.key)
        return rows
    if len(rule.key) == 1 and _distinct(rows[rule.key[0]]):
        return rows.combine_chunks()  # no duplicates: nothing to sort
    last = _last_per_key(_numbered(rows.select([*rule.key, *rule.order]), 0), rule.key, rule.order)
    keep = np.sort(last[_POS].to_numpy())  # input order kept (the writers' partition runs)
    if keep.size < rows.num_rows:
        log.info("merge batch: %d older versions of a key dropped", rows.num_rows - keep.size)
    return rows.take(pa.array(keep)).combine_chunks()


def _distinct(column: pa.ChunkedArray) -> bool:
    """Whether every value of a (null-free) key column differs: strictly increasing integers
    (ids assigned in time order, the common archive layout) are checked without hashing."""
    if pa.types.is_integer(column.type) and len(column) > 1:
        values = _array(column).to_numpy(zero_copy_only=False)
        if bool((values[1:] > values[:-1]).all()):
            return True
    return bool(pc.count_distinct(column).as_py() == len(column))


def plan(batch: pa.Table, existing: pa.Table, rule: MergeRule) -> MergePlan:
    """Winners of ``batch`` (deduplicated) against ``existing`` (every table row of its keys).

    Every table row of the batch's keys is replaced: all are deleted and each key's winner
    written (a table winner is rewritten unchanged, lineage included). Deleting by *all* the
    batch's keys also makes the engine's conflict check cover a concurrent commit of a key
    that is new to the table.
    """
    keys = batch.select(list(rule.key))
    decided = decide(batch, existing, rule)
    if decided.losers.size == existing.num_rows:  # every table row of these keys loses
        return MergePlan(decided.rows, keys)
    kept = np.ones(existing.num_rows, dtype=bool)
    kept[decided.losers] = False
    old = existing.filter(pa.array(kept)).select(batch.column_names).cast(batch.schema)
    rows = pa.concat_tables([decided.rows, old]).combine_chunks()
    return MergePlan(rows, keys, decided.rows.num_rows)


@dataclass(frozen=True)
class Decision:
    """One batch decided against the table rows of its keys: the batch rows that win (to add)
    and the positions in ``existing`` of the table rows that lose (to delete). Table rows
    that win stay where they are."""

    rows: pa.Table
    won: np.ndarray  # int64 positions into the batch of ``rows`` (ascending)
    losers: np.ndarray  # int64 positions into the ``existing`` table given to :func:`decide`


def decide(batch: pa.Table, existing: pa.Table, rule: MergeRule) -> Decision:
    """Winners of ``batch`` (deduplicated) against ``existing`` (every table row of its keys;
    only the key and order columns are read), by the same order as :func:`plan`: a full tie
    keeps the table's row. Vectorised: one sort of the decision columns, no row payload."""
    if existing.num_rows == 0:
        return Decision(batch, np.arange(batch.num_rows, dtype=np.int64), np.empty(0, np.int64))
    cols, keys = [*rule.key, *rule.order], list(rule.key)
    mine = _numbered(batch.select(cols), 0)
    theirs = _numbered(existing.select(cols).cast(batch.select(cols).schema), 1)
    # only the batch rows of keys the table holds are contested: sort those alone
    if len(keys) == 1:
        contested = mine.filter(pc.is_in(mine[keys[0]], value_set=theirs[keys[0]]))
    else:
        held = theirs.select(keys).group_by(keys).aggregate([])
        contested = mine.join(held, keys, join_type="left semi")
    winners = _last_per_key(pa.concat_tables([contested, theirs]), rule.key,
                            (*rule.order, _ORIGIN))  # fmt: skip
    origin = winners[_ORIGIN].to_numpy()
    at = winners[_POS].to_numpy()
    free = np.ones(batch.num_rows, dtype=bool)
    free[contested[_POS].to_numpy()] = False
    won = np.sort(np.concatenate([np.flatnonzero(free), at[origin == 0]]))
    keep = np.ones(existing.num_rows, dtype=bool)
    keep[at[origin == 1]] = False
    if won.size < batch.num_rows:
        log.info("merge: table holds a newer version of %d batch keys", batch.num_rows - won.size)
    rows = batch if won.size == batch.num_rows else batch.take(pa.array(won))
    return Decision(rows, won.astype(np.int64), np.flatnonzero(keep).astype(np.int64))


_POS = "_seamline_merge_pos_"


def _numbered(rows: pa.Table, origin: int) -> pa.Table:
    n = rows.num_rows
    return rows.append_column(_ORIGIN, pa.array(np.full(n, origin, np.int8))).append_column(
        _POS, pa.array(np.arange(n, dtype=np.int64))
    )


def in_scope(rows: pa.Table, scope: pc.Expression | None) -> np.ndarray:
    """A boolean mask of the rows matching ``scope`` (a null predicate is outside)."""
    mask = np.zeros(rows.num_rows, dtype=bool)
    if scope is None or rows.num_rows == 0:
        return mask
    numbered = rows.append_column(_POS, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    mask[numbered.filter(scope)[_POS].to_numpy()] = True
    return mask


def outside(existing: pa.Table, scope: pc.Expression | None) -> pa.Table:
    """``existing`` without the rows of ``scope`` (a slice re-run replaces its own scope, so
    those rows are not versions to compare); a null predicate (archive lineage) is outside."""
    if scope is None or existing.num_rows == 0:
        return existing
    marker = "_seamline_row_"
    numbered = existing.append_column(marker, pa.array(range(existing.num_rows), pa.int64()))
    hit = numbered.filter(scope)[marker]
    keep = pc.invert(pc.is_in(numbered[marker], value_set=hit.combine_chunks()))
    return existing.filter(keep)


def key_values(rows: pa.Table, keys: tuple[str, ...]) -> list[tuple[object, ...]]:
    """Distinct key tuples of ``rows`` as Python values (for structural filters)."""
    distinct = rows.select(list(keys)).group_by(list(keys)).aggregate([])
    columns = [distinct[k].to_pylist() for k in keys]
    return list(zip(*columns, strict=True))


class KeySet:
    """The distinct keys of a batch, to test table rows against: one column is a hash set
    built once per test (``pc.is_in``, ~10x cheaper than filtering by an ``isin`` expression
    of thousands of values); several columns use :func:`arrow_key_filter`."""

    def __init__(self, rows: pa.Table, keys: tuple[str, ...]) -> None:
        self.keys = keys
        # a value set may repeat values (``pc.is_in`` hashes it): no ``unique`` pass first
        self.values = rows[keys[0]].combine_chunks() if len(keys) == 1 else None
        self.expr = arrow_key_filter(rows, keys) if len(keys) > 1 else None

    def mask(self, table: pa.Table) -> np.ndarray:
        """A boolean mask of ``table``'s rows whose key is one of the batch's keys."""
        if table.num_rows == 0:
            return np.zeros(0, dtype=bool)
        if self.values is None:
            return in_scope(table, self.expr)
        column = _array(table[self.keys[0]])
        values = self.values if self.values.type == column.type else self.values.cast(column.type)
        hit = pc.is_in(column, value_set=values)  # a null key is in no batch
        return np.asarray(hit.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def arrow_key_filter(rows: pa.Table, keys: tuple[str, ...]) -> pc.Expression:
    """``key IN (...)`` (one column) or an OR of key-tuple equalities, built structurally."""
    if len(keys) == 1:
        values = pc.unique(rows[keys[0]].combine_chunks())
        return pc.field(keys[0]).isin(values)
    parts = [
        reduce(
            lambda a, b: a & b, [pc.field(k) == pa.scalar(v) for k, v in zip(keys, t, strict=True)]
        )
        for t in key_values(rows, keys)
    ]
    return reduce(lambda a, b: a | b, parts)
