"""Iceberg side of merge by key (``backfill.sinks.merge``): read, decide, stage (DESIGN §4).

One attempt (:class:`MergePlanner`) finds the data files that may hold the batch's keys (a
key filter built structurally, so archive rows with null lineage are found too; Iceberg prunes
data files by the key column's statistics and never opens files that cannot hold a key),
reads only their key and order columns, decides the winners in Arrow, writes the winning
batch rows, rewrites only the files holding a row that loses, and stages "replace those
files, add the new ones" in the caller's transaction.

The comparison is made against the versions present at commit time: the table carries
``commit.retry.num-retries = 0`` (``backfill.sinks.iceberg.live.NO_LIBRARY_RETRY``), so the
``AssertRefSnapshotId`` every pyiceberg snapshot producer sends makes the catalog refuse the
commit if anything landed since the plan (``CommitFailedException``: certainly not applied),
and the caller re-plans on the new snapshot. pyiceberg's own retry would rebase the plan onto
the new head without re-reading, which is why it is off. On one host, merge writers of a table
in a local warehouse take turns through a file lock (:func:`merge_lock`) for the commit only:
each plans on the head first, outside the lock, and commits under it at once if the head did
not move; if it moved, the lock is released and the plan redone outside it (a re-plan re-reads
only the files added since: data files are immutable, and re-writes only what changed), and
after a bounded number of such rounds the plan is made under the lock (:func:`merge_turn`);
so history slices and live batches neither starve each other with conflicts nor wait for
each other's reads and writes. Remote warehouses rely on the requirement and the
retry policy (bounded, with jitter) alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
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


OPTIMISTIC_ROUNDS = 3  # plans made outside the merge lock before one is made under it


@contextlib.contextmanager
def merge_turn(
    planner: MergePlanner, load: Callable[[], Table], rounds: int = OPTIMISTIC_ROUNDS
) -> Iterator[Table]:
    """The table loaded under the merge lock, with ``planner`` planned on it when possible.

    Each round plans on the head OUTSIDE the lock (reads, decides, writes), then takes the
    lock and reloads: if the head is still the planned one, the body commits at once (the
    lock is held for the metadata commit only); if another merge committed meanwhile, the
    lock is released and the plan is redone outside it (incremental: only the files added
    since are read). After ``rounds`` such rounds the body runs anyway and the planner
    re-plans under the lock, so a writer always gets its turn (bounded), and neither side
    holds the other off for its whole read and rewrite. Correctness never depends on the
    rounds: the body stages against the snapshot loaded under the lock."""
    for attempt in range(rounds + 1):
        head = load()
        planner.plan(head)
        with merge_lock(head):
            table = load()
            if attempt == rounds or planner.planned_on(table):
                yield table
                return
        log.debug("merge: the head moved while planning, planning again outside the lock")


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


def sorted_keys(keys: np.ndarray) -> np.ndarray:
    """``keys`` in ascending order, as :func:`_bounds_may_hold` searches them. Already sorted
    input (history slices of an ordered archive) is returned as is; duplicates are harmless
    to the binary search, so no ``np.unique`` (hash-based in numpy 2: ~110 ms per 250 k keys,
    a third of a month slice's merge, against ~1 ms for the order check)."""
    if keys.size < 2 or bool((keys[1:] >= keys[:-1]).all()):
        return keys
    return np.sort(keys)


def _bounds_may_hold(task: FileScanTask, field_id: int, ftype: Any, keys: np.ndarray) -> bool:
    """Whether a data file's key statistics (min/max) can hold one of the sorted ``keys``;
    ``True`` when the file has no statistics for the key."""
    lower = (task.file.lower_bounds or {}).get(field_id)
    upper = (task.file.upper_bounds or {}).get(field_id)
    if lower is None or upper is None:
        return True
    return range_holds(from_bytes(ftype, lower), from_bytes(ftype, upper), keys)


def range_holds(lo: Any, hi: Any, keys: np.ndarray) -> bool:
    """Whether one of the ascending ``keys`` lies in ``[lo, hi]`` (a binary search)."""
    i = int(np.searchsorted(keys, lo, side="left"))
    return i < len(keys) and bool(keys[i] <= hi)


def candidate_files(
    table: Table, rows: pa.Table, keys: tuple[str, ...], scope: BooleanExpression | None
) -> list[FileScanTask]:
    """Scan tasks of every data file that may hold a row of ``rows``' keys, or of ``scope``."""
    by_keys, own = _candidates(table, rows, keys, scope)
    return [*by_keys, *own]


def _candidates(
    table: Table, rows: pa.Table, keys: tuple[str, ...], scope: BooleanExpression | None
) -> tuple[list[FileScanTask], list[FileScanTask]]:
    """(files that may hold ``rows``' keys only, files that may also hold ``scope`` rows).

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
    if tasks and column is not None and pa.types.is_integer(column.type) and column.null_count == 0:
        field = table.schema().find_field(keys[0])
        wanted = sorted_keys(column.to_numpy())
        tasks = [t for t in tasks if _bounds_may_hold(t, field.field_id, field.field_type, wanted)]
    if scope is None:
        return list(tasks), []
    own = table.scan(row_filter=scope).plan_files()
    mine = {t.file.file_path for t in own}
    return [t for t in tasks if t.file.file_path not in mine], list(own)


_FileKey = tuple[str, tuple[str, ...]]  # a data file's path and its delete files' paths


def _file_key(task: FileScanTask) -> _FileKey:
    return task.file.file_path, tuple(sorted(d.file_path for d in task.delete_files))


def _read(table: Table, tasks: list[FileScanTask]) -> list[pa.Table]:
    """The rows of each task's data file, in task order and in file order (deletes
    applied), read in parallel."""
    scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
    if len(tasks) <= 1:
        return [scan.to_table([t]) for t in tasks]
    # a pool of our own: ``to_table`` runs on pyiceberg's shared pool, and waiting on that
    # pool from its own threads deadlocks once every thread waits
    with ThreadPoolExecutor(min(_READERS, len(tasks)), "seamline-merge-read") as pool:
        return list(pool.map(lambda t: scan.to_table([t]), tasks))


def _digest(positions: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(positions).tobytes(), digest_size=16).digest()


class MergePlanner:
    """One merge batch planned against successive snapshots of one table.

    Copy-on-write at file level, rewriting only what loses: the files that may hold the
    batch's keys (or rows of the slice's own ``scope``: a re-written history slice replaces it)
    are read once; the winners are decided on the key and order columns alone
    (:func:`backfill.sinks.merge.decide`, vectorised, sorting only the contested keys); the
    batch rows that win are written, and only the files holding a row that LOSES (or a scope
    row) are replaced by a file of their other rows, unchanged (lineage included). A file
    whose rows of the batch's keys all win stays untouched (a late archive slice under newer
    live rows appends only its new keys).

    Data files are immutable, so what was read from a file and what was written to replace it
    is kept by file path: :meth:`plan` on a newer snapshot (the head moved between the plan
    made outside the merge lock and the commit under it) reads only the files added since and
    re-writes only what changed.
    """

    def __init__(
        self,
        rows: pa.Table,
        rule: merge.MergeRule,
        sort_by: str | None = None,
        scope: tuple[BooleanExpression, pc.Expression] | None = None,
    ) -> None:
        self.rows, self.rule, self.sort_by, self.scope = rows, rule, sort_by, scope
        self.columns = list(dict.fromkeys((*rule.key, *rule.order)))
        self.hit = merge.KeySet(rows, rule.key) if rows.num_rows else None
        self._files: dict[_FileKey, pa.Table] = {}  # the rows of a data file, read once
        self._groups: list[tuple[frozenset[tuple[_FileKey, bytes]], list[DataFile]]] = []
        self._winners: tuple[bytes, list[DataFile]] | None = None
        self._planned: tuple[int | None, MergeFiles] | None = None
        self.plans = 0  # plans computed (a re-plan after the head moved counts)
        self.files_read = 0  # data files opened (each once per planner)

    def plan(self, table: Table) -> MergeFiles:
        """The data files this merge adds and replaces on ``table``'s current snapshot."""
        snapshot = table.metadata.current_snapshot_id
        if self._planned is not None and self._planned[0] == snapshot:
            return self._planned[1]
        planned = self._plan(table) if self.rows.num_rows else MergeFiles([], [])
        self._planned = (snapshot, planned)
        self.plans += 1
        return planned

    def planned_on(self, table: Table) -> bool:
        """Whether the last plan was made on ``table``'s current snapshot."""
        return self._planned is not None and self._planned[0] == table.metadata.current_snapshot_id

    def _plan(self, table: Table) -> MergeFiles:
        by_keys, own = _candidates(table, self.rows, self.rule.key, self.scope and self.scope[0])
        tasks = [*by_keys, *own]
        fresh = [t for t in tasks if _file_key(t) not in self._files]
        for task, data in zip(fresh, _read(table, fresh), strict=True):
            self._files[_file_key(task)] = data
        self.files_read += len(fresh)
        parts = [self._files[_file_key(t)] for t in tasks]
        scoped = [np.zeros(p.num_rows, dtype=bool) for p in parts[: len(by_keys)]] + [
            merge.in_scope(p, self.scope and self.scope[1]) for p in parts[len(by_keys) :]
        ]
        versions, where = [], []
        for i, (part, drop) in enumerate(zip(parts, scoped, strict=True)):
            hit = self.hit.mask(part) if self.hit is not None else np.zeros(part.num_rows, bool)
            mask = hit & ~drop  # a scope row is no version
            at = np.flatnonzero(mask)
            versions.append(part.select(self.columns).take(pa.array(at)))
            where.append(np.stack([np.full(at.size, i, np.int64), at.astype(np.int64)]))
        existing = pa.concat_tables(versions) if versions else self.rows.select(self.columns)[:0]
        decided = merge.decide(self.rows, existing, self.rule)
        lost = np.concatenate(where, axis=1)[:, decided.losers] if where else np.empty((2, 0))
        replaced: dict[int, np.ndarray] = {
            i: np.union1d(lost[1][lost[0] == i], np.flatnonzero(scoped[i]))
            for i in range(len(tasks))
            if (lost[0] == i).any() or scoped[i].any()
        }
        add = self._write_winners(table, decided) + self._rewrite(table, tasks, replaced)
        log.debug(
            "merge plan: batch=%d files_read=%d/%d versions=%d write=%d files_replaced=%d",
            self.rows.num_rows, len(fresh), len(tasks), existing.num_rows,
            decided.rows.num_rows, len(replaced),
        )  # fmt: skip
        return MergeFiles(add, [tasks[i].file for i in sorted(replaced)])

    def _write_winners(self, table: Table, decided: merge.Decision) -> list[DataFile]:
        digest = _digest(decided.won)
        if self._winners is None or self._winners[0] != digest:
            self._winners = (digest, write_data_files(table, decided.rows))
        return self._winners[1]

    def _rewrite(
        self, table: Table, tasks: list[FileScanTask], replaced: dict[int, np.ndarray]
    ) -> list[DataFile]:
        """Files of the surviving rows of every replaced file; a group written for an earlier
        plan is reused when every file of it loses exactly the same rows again."""
        need = {(_file_key(tasks[i]), _digest(pos)): i for i, pos in replaced.items()}
        out: list[DataFile] = []
        left = dict(need)
        for members, files in self._groups:
            if members <= left.keys():
                out += files
                for m in members:
                    del left[m]
        if not left:
            return out
        schema = table.schema().as_arrow()
        kept = []
        for i in sorted(left.values()):
            data = self._files[_file_key(tasks[i])]
            keep = np.ones(data.num_rows, dtype=bool)
            keep[replaced[i]] = False
            if keep.any():
                kept.append(data.filter(pa.array(keep)).select(schema.names).cast(schema))
        written: list[DataFile] = []
        if kept:
            rows = pa.concat_tables(kept)
            if self.sort_by is not None and rows.num_rows > 1:  # one run per partition
                rows = rows.sort_by([(self.sort_by, "ascending")])
            written = write_data_files(table, rows.combine_chunks())
        self._groups.append((frozenset(left), written))
        return out + written

    def stage(self, tx: Transaction, table: Table, props: dict[str, str]) -> None:
        """Plan against ``table`` (the snapshot ``tx`` is based on; cached when unchanged) and
        stage the merge: one snapshot that replaces exactly the planned files (pyiceberg
        refuses it if one of them is no longer in that snapshot) and adds the new ones."""
        planned = self.plan(table)
        if not planned.remove:
            stage_append(tx, planned.add, props)
            return
        with tx.update_snapshot(snapshot_properties=props).overwrite() as rewrite:
            for data_file in planned.remove:
                rewrite.delete_data_file(data_file)
            for data_file in planned.add:
                rewrite.append_data_file(data_file)


def stage_merge(
    tx: Transaction,
    table: Table,
    rows: pa.Table,
    rule: merge.MergeRule,
    props: dict[str, str],
    sort_by: str | None = None,
    scope: tuple[BooleanExpression, pc.Expression] | None = None,
) -> None:
    """Plan ``rows`` against ``table`` and stage the merge in ``tx`` (one attempt)."""
    MergePlanner(rows, rule, sort_by, scope).stage(tx, table, props)
