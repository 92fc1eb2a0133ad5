"""Lance side of merge by key (``backfill.sinks.merge``): read, decide, delete + add (DESIGN §4).

One attempt reads every row of the batch's keys at the newest version (whatever side or
source wrote it, archive rows included), decides the winners in Arrow, then computes the
deletion vectors of the replaced keys (and of a re-run slice's own scope) per fragment. The
caller commits deletions and the winners' new fragments as ONE transaction at that version;
merge writers take the dataset's commit lock (``common.dataset_lock``), so nothing commits
between the read and the commit on this host and the comparison is made at commit time.

Lance filters are SQL text: the key predicate is assembled from typed parts only (quoted
identifiers, string literals with quotes doubled, validated integers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import lance
import pyarrow as pa
import pyarrow.compute as pc
from lance.fragment import write_fragments

from backfill.sinks import merge
from backfill.sinks.scopes import lance_ident, lance_int, lance_str

log = logging.getLogger(__name__)


def _literal(value: object, kind: pa.DataType) -> str:
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        assert isinstance(value, str)
        return lance_str(value)
    if pa.types.is_integer(kind):
        assert isinstance(value, int)
        return lance_int(value)
    raise ValueError(f"expected a string or integer merge key column, found {kind}")


def key_predicate(key_rows: pa.Table, keys: tuple[str, ...]) -> str | None:
    """SQL ``key IN (...)`` (or OR of key-tuple equalities); ``None`` for no keys."""
    if key_rows.num_rows == 0:
        return None
    types = [key_rows.schema.field(k).type for k in keys]
    if len(keys) == 1 and pa.types.is_integer(types[0]):  # typed integers: no quoting needed
        ints = pc.unique(key_rows[keys[0]].combine_chunks()).to_numpy(zero_copy_only=False)
        return f"{lance_ident(keys[0])} IN ({', '.join(map(str, ints.tolist()))})"
    if len(keys) == 1:
        values = ", ".join(_literal(v, types[0]) for (v,) in merge.key_values(key_rows, keys))
        return f"{lance_ident(keys[0])} IN ({values})"
    parts = [
        "("
        + " AND ".join(
            f"{lance_ident(k)} = {_literal(v, t)}" for k, v, t in zip(keys, row, types, strict=True)
        )
        + ")"
        for row in merge.key_values(key_rows, keys)
    ]
    return "(" + " OR ".join(parts) + ")"


_ADDR = "_rowaddr"
_REWRITE_FACTOR = 4  # a range rewrite re-adds at most this many rows per batch row


def _range(rows: pa.Table, keys: tuple[str, ...]) -> tuple[str, pc.Expression] | None:
    """``lo <= key <= hi`` (SQL and Arrow forms) for more than 200 keys of one column."""
    if len(keys) != 1 or rows.num_rows <= 200:
        return None
    k = keys[0]
    bounds = pc.min_max(rows[k])
    lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
    kind = rows.schema.field(k).type
    sql = f"({lance_ident(k)} >= {_literal(lo, kind)} AND {lance_ident(k)} <= {_literal(hi, kind)})"
    return sql, (pc.field(k) >= pa.scalar(lo, kind)) & (pc.field(k) <= pa.scalar(hi, kind))


_PER_MICRO = {"s": 1_000_000, "ms": 1_000, "us": 1}


def _micros(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A timestamp column as int64 microseconds since the epoch (nanoseconds floored)."""
    unit = column.type.unit
    ints = column.cast(pa.int64())
    if unit == "ns":
        return pc.floor_divide(ints, 1_000)
    return pc.multiply(ints, _PER_MICRO[unit])


class FragmentBounds:
    """Per fragment: the min/max of the key column and of the event-time column, so a merge
    scans only the fragments whose ranges meet the batch's key range or the slice's time
    bucket (pruning like Iceberg's file statistics; Lance keeps none for a plain column).

    Bounds are keyed by the fragment's data file paths: data files never change (a deletion
    only hides rows, so the bounds stay a superset; compaction writes new files), so a
    cached bound cannot go stale. A fragment not seen before is read once (its two columns).
    """

    def __init__(self, key: str, event_time: str) -> None:
        self.key, self.event_time = key, event_time
        self._known: dict[tuple[str, ...], tuple[Any, Any, Any, Any]] = {}

    def _bounds(self, frag: Any) -> tuple[Any, Any, Any, Any]:
        files = tuple(f.path for f in frag.metadata.data_files())
        got = self._known.get(files)
        if got is None:
            cols = frag.to_table(columns=[self.key, self.event_time])
            k, t = pc.min_max(cols[self.key]), pc.min_max(_micros(cols[self.event_time]))
            got = (k["min"].as_py(), k["max"].as_py(), t["min"].as_py(), t["max"].as_py())
            self._known[files] = got
        return got

    def seed(self, fragments: list[Any], rows: pa.Table) -> None:
        """Bounds of fragments just written from ``rows`` (their bounds contain the
        fragments'), so they are never read back for them."""
        if not rows.num_rows or not fragments:
            return
        k, t = pc.min_max(rows[self.key]), pc.min_max(_micros(rows[self.event_time]))
        got = (k["min"].as_py(), k["max"].as_py(), t["min"].as_py(), t["max"].as_py())
        for meta in fragments:
            self._known[tuple(f.path for f in meta.data_files())] = got

    def candidates(
        self, ds: lance.LanceDataset, lo: object, hi: object, window: tuple[Any, Any] | None
    ) -> list[Any]:
        """Fragments that may hold a key in ``[lo, hi]`` or an event time in ``window``
        (``[start, end)``; ``None``: no scope). A fragment without bounds (no rows) is kept."""
        out = []
        for frag in ds.get_fragments():
            kmin, kmax, tmin, tmax = self._bounds(frag)
            keys = kmin is None or (kmin <= hi and kmax >= lo)
            times = window is not None and (tmin is None or (tmin < window[1] and tmax >= window[0]))
            if keys or times:
                out.append(frag)
        if len(self._known) > 4 * max(len(out), 64):  # forget fragments compacted away
            present = {tuple(f.path for f in g.metadata.data_files()) for g in ds.get_fragments()}
            self._known = {k: v for k, v in self._known.items() if k in present}
        return out


def _read(
    ds: lance.LanceDataset,
    flt: pc.Expression,
    columns: list[str] | None = None,
    fragments: list[Any] | None = None,
) -> tuple[pa.Table, set[int]]:
    """Rows matching ``flt`` (a structural Arrow filter) and the fragments holding them
    (only ``fragments`` are scanned when given)."""
    scan = ds.scanner(columns=columns, filter=flt, with_row_address=True, fragments=fragments)
    got = scan.to_table()
    frags = pc.shift_right(got[_ADDR], pa.scalar(32, pa.uint64())) if got.num_rows else []
    touched = {int(f) for f in pc.unique(frags).to_pylist()} if got.num_rows else set()
    return got.drop_columns([_ADDR]), touched


def fragments_holding(ds: lance.LanceDataset, flt: pc.Expression) -> set[int]:
    """Ids of the fragments of ``ds`` holding a live (undeleted) row matching ``flt``: one
    scan reading only the filter's columns, so a scoped delete evaluates its predicate on
    these fragments alone instead of opening every fragment of the dataset."""
    return _read(ds, flt, columns=[])[1]


@dataclass(frozen=True)
class LanceMergeChanges:
    """One merge against one version: fragments removed/updated and new fragments."""

    read_version: int
    removed: list[int]
    updated: list[Any]
    kept: list[Any]  # metadata of every surviving fragment (updated or unchanged)
    new: list[Any]
    rows: int


def plan_changes(
    ds: lance.LanceDataset,
    uri: str,
    schema: pa.Schema,
    rows: pa.Table,
    rule: merge.MergeRule,
    scope: tuple[str, pc.Expression] | None = None,
    storage_options: dict[str, str] | None = None,
    prune: tuple[FragmentBounds, tuple[Any, Any] | None] | None = None,
) -> LanceMergeChanges:
    """Read the batch's keys at ``ds``, decide winners, write their fragments (uncommitted)
    and compute deletions of the replaced keys plus ``scope`` (SQL and Arrow forms).

    A batch of more than 200 keys of one column reads its key range; when the range holds
    few other rows (at most :data:`_REWRITE_FACTOR` times the batch) the deletion is the
    range and those rows are re-added unchanged (lineage included), so no fragment evaluates
    an SQL ``IN`` of every key. With ``prune`` (the bounds cache and the scope's event-time
    window, ``None`` without a scope) only the fragments whose bounds meet the key range or
    the window are scanned.
    """
    rng = _range(rows, rule.key)
    wanted = merge.KeySet(rows, rule.key)
    keyed = rng[1] if rng is not None else merge.arrow_key_filter(rows, rule.key)
    # one scan for the keys' rows and the slice's own scope (the fragments to touch)
    frags = None
    if prune is not None and rng is not None and (scope is None or prune[1] is not None):
        bounds = pc.min_max(rows[rule.key[0]])
        frags = prune[0].candidates(ds, bounds["min"].as_py(), bounds["max"].as_py(), prune[1])
    found, touched = _read(ds, keyed if scope is None else keyed | scope[1], fragments=frags)
    # boolean masks over ``found`` (one hash set of the batch's keys, no filter per subset)
    hit = wanted.mask(found)
    own = merge.in_scope(found, scope and scope[1])  # a slice re-run replaces its own scope
    near = merge.in_scope(found, rng[1]) if rng is not None else hit  # in the key range
    existing = found.filter(pa.array(hit & ~own))
    decided = merge.plan(rows, existing, rule)
    # the table rows rewritten unchanged go to fragments of their own: the batch's
    # fragments keep the batch's tight key and event-time bounds (see FragmentBounds)
    out, carried = decided.batch_rows, decided.carried
    if rng is not None and int(near.sum()) <= _REWRITE_FACTOR * rows.num_rows:
        others = found.filter(pa.array(near & ~hit & ~own))
        if others.num_rows:
            others = others.select(out.column_names).cast(out.schema)
            carried = pa.concat_tables([carried, others])
        replace: str | None = rng[0]
    else:  # built only when used: an IN of every key costs ~30 us per key to spell
        replace = key_predicate(decided.replace, rule.key)
    delete = [p for p in (scope and scope[0], replace) if p]
    removed: list[int] = []
    updated: list[Any] = []
    kept: list[Any] = []
    for frag in ds.get_fragments():
        before = frag.metadata
        holds = bool(delete) and frag.fragment_id in touched  # only fragments holding rows
        after = frag.delete(" OR ".join(f"({p})" for p in delete)) if holds else before
        if after is None:
            removed.append(frag.fragment_id)
            continue
        kept.append(after)
        if after != before:
            updated.append(after)
    new: list[Any] = []
    for part in (out, carried):
        if part.num_rows:
            written = write_fragments(part, uri, schema=schema, storage_options=storage_options)
            if prune is not None:
                prune[0].seed(written, part)
            new += written
    return LanceMergeChanges(ds.version, removed, updated, kept, new, out.num_rows + carried.num_rows)
