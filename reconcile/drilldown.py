"""Drill-down: bisect a mismatching slice until the differing rows are named.

Both sides of one slice (bounded, so held in memory) are hashed once with the checksum scheme
and ordered by a coordinate: ``(_kafka_partition, _kafka_offset)`` for Kafka slices, or the
hash of the business-key columns for archive slices (a key range in hash space). The
coordinate interval is halved while the halves' checksums (count, sum, xor; read off prefix
aggregates in O(1)) differ; a mismatching interval with at most ``leaf_rows`` rows, or a
single coordinate, is diffed row by row. Every differing row is counted; a bounded sample is
named with its coordinate and values.

Kinds: ``missing`` (in the source, not in the table), ``extra`` (in the table, not in the
source: duplicates, phantoms), ``changed`` (both sides hold the coordinate with different
content; counted once per pair).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from coordinator.core import lineage
from reconcile.checksum import U64, row_hashes

log = logging.getLogger(__name__)

DiffKind = Literal["missing", "extra", "changed"]
KAFKA_KEY: Final = (lineage.PARTITION, lineage.OFFSET)
_OFFSET_BITS: Final = 40
_MASK: Final = (1 << 64) - 1


@dataclass(frozen=True)
class DiffRow:
    """One named difference: where it is and the row on each side (``None``: absent)."""

    kind: DiffKind
    where: dict[str, Any]
    source: dict[str, Any] | None = None
    table: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (values rendered with ``str`` when not JSON-native)."""
        return {
            "kind": self.kind,
            "where": _jsonable(self.where),
            "source": _jsonable(self.source),
            "table": _jsonable(self.table),
        }


@dataclass(frozen=True)
class DrillDown:
    """Counts of every differing row of a slice plus a bounded, named sample."""

    missing: int = 0
    extra: int = 0
    changed: int = 0
    probes: int = 0
    rows: tuple[DiffRow, ...] = field(default=())

    @property
    def total(self) -> int:
        """All differences."""
        return self.missing + self.extra + self.changed

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "missing": self.missing,
            "extra": self.extra,
            "changed": self.changed,
            "probes": self.probes,
            "rows": [r.to_json() for r in self.rows],
        }


def _plain(v: object) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, int | str | bool | None)


def _jsonable(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    return {k: v if _plain(v) else str(v) for k, v in doc.items()}


def coordinates(data: pa.Table, key: Sequence[str]) -> U64:
    """Bisection coordinate per row: partition/offset for Kafka keys, else the key's hash."""
    if tuple(key) == KAFKA_KEY:
        part = np.asarray(data.column(lineage.PARTITION).to_numpy(zero_copy_only=False))
        off = np.asarray(data.column(lineage.OFFSET).to_numpy(zero_copy_only=False))
        return (part.astype(np.uint64) << np.uint64(_OFFSET_BITS)) | off.astype(np.uint64)
    return row_hashes(data, key)


@dataclass
class _Side:
    """One side ordered by coordinate, with prefix aggregates of the row hashes."""

    data: pa.Table
    order: npt.NDArray[np.intp]
    coords: U64
    hashes: U64
    psum: U64
    pxor: U64

    @classmethod
    def build(cls, data: pa.Table, key: Sequence[str], columns: Sequence[str]) -> _Side:
        coords = coordinates(data, key)
        order = np.argsort(coords, kind="stable")
        hashes = row_hashes(data, columns)[order]
        zero = np.zeros(1, dtype=np.uint64)
        return cls(
            data,
            order,
            coords[order],
            hashes,
            np.concatenate([zero, np.cumsum(hashes, dtype=np.uint64)]),
            np.concatenate([zero, np.bitwise_xor.accumulate(hashes)]) if len(hashes) else zero,
        )

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        a = int(np.searchsorted(self.coords, np.uint64(lo), side="left"))
        b = int(np.searchsorted(self.coords, np.uint64(hi), side="right"))
        return a, b

    def digest(self, a: int, b: int) -> tuple[int, int, int]:
        return (
            b - a,
            (int(self.psum[b]) - int(self.psum[a])) & _MASK,
            int(self.pxor[b] ^ self.pxor[a]),
        )

    def row(self, i: int, key: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        values: dict[str, Any] = self.data.slice(int(self.order[i]), 1).to_pylist()[0]
        return {k: values.get(k) for k in key}, values


@dataclass
class _Found:
    source_only: list[int] = field(default_factory=list)
    table_only: list[int] = field(default_factory=list)
    probes: int = 0


def _leaf(src: _Side, tab: _Side, sa: tuple[int, int], ta: tuple[int, int], out: _Found) -> None:
    left = Counter(int(h) for h in src.hashes[sa[0] : sa[1]])
    right = Counter(int(h) for h in tab.hashes[ta[0] : ta[1]])
    for i in range(*sa):
        h = int(src.hashes[i])
        if right[h] > 0:
            right[h] -= 1
        else:
            out.source_only.append(i)
    for i in range(*ta):
        h = int(tab.hashes[i])
        if left[h] > 0:
            left[h] -= 1
        else:
            out.table_only.append(i)


def _bisect(src: _Side, tab: _Side, leaf_rows: int) -> _Found:
    out = _Found()
    all_coords = np.concatenate([src.coords[:1], src.coords[-1:], tab.coords[:1], tab.coords[-1:]])
    if not len(all_coords):
        return out
    stack = [(int(all_coords.min()), int(all_coords.max()))]
    while stack:
        lo, hi = stack.pop()
        sa, ta = src.span(lo, hi), tab.span(lo, hi)
        out.probes += 1
        if src.digest(*sa) == tab.digest(*ta):
            continue
        if lo == hi or (sa[1] - sa[0]) + (ta[1] - ta[0]) <= leaf_rows:
            _leaf(src, tab, sa, ta, out)
            continue
        mid = lo + (hi - lo) // 2
        stack.extend([(mid + 1, hi), (lo, mid)])
    return out


def bisect_diff(
    source: pa.Table,
    table: pa.Table,
    *,
    key: Sequence[str],
    columns: Sequence[str],
    leaf_rows: int = 16,
    sample: int = 20,
) -> DrillDown:
    """Bisect by ``key`` (Kafka lineage or business key) until every differing row is found."""
    src, tab = _Side.build(source, key, columns), _Side.build(table, key, columns)
    found = _bisect(src, tab, leaf_rows)
    by_coord: dict[int, list[int]] = {}
    for i in found.table_only:
        by_coord.setdefault(int(tab.coords[i]), []).append(i)
    rows: list[DiffRow] = []
    missing = changed = 0
    for i in found.source_only:
        partners = by_coord.get(int(src.coords[i]))
        where, values = src.row(i, key)
        other = tab.row(partners.pop(), key)[1] if partners else None
        changed += other is not None
        missing += other is None
        if len(rows) < sample:
            rows.append(
                DiffRow("changed" if other is not None else "missing", where, values, other)
            )
    extra = [i for idx in by_coord.values() for i in idx]
    for i in sorted(extra)[: max(0, sample - len(rows))]:
        where, values = tab.row(i, key)
        rows.append(DiffRow("extra", where, None, values))
    log.debug("drill-down probes=%d differences=%d", found.probes, missing + changed + len(extra))
    return DrillDown(missing, len(extra), changed, found.probes, tuple(rows))
