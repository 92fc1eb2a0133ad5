"""Business keys across the table: uniqueness (duplicates named) and merge-mode supersession.

Both need one pass over the whole table's key columns plus lineage (the *key index*): memory
is O(table rows x key width), the one place the reconciler is not O(slice). It is built only
when the job declares ``table.key`` and the run needs it (archive slices or merge mode).

* **Uniqueness**: every business key must occur once in its *domain*. In merge mode (archive
  and topic matched by key, DESIGN §1) the domain is the whole table; otherwise the archive
  rows (a Kafka topic is an event log: one key may legitimately appear at many offsets).
* **Superseded** (merge mode only): the merge writers keep one row per key, the newest by
  the declared order (``version`` column, then archive < Kafka, partition, offset). A source
  record (archive row or Kafka record, history or live) missing from the table is
  *superseded*, not lost, when the table holds its key from a record later in that order.
  A key held only by an EARLIER record means an older value overwrote a newer one: still lost.
  With uniqueness and the per-slice checksums this proves every key's row is its newest
  source version.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core import lineage
from coordinator.core.ports import TableReader

log = logging.getLogger(__name__)

SAMPLE: Final = 20
_HOLDER: Final = "_holder_"


@dataclass(frozen=True)
class DuplicateKey:
    """One business key held by more than one row, with where those rows came from."""

    key: dict[str, Any]
    rows: int
    where: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "key": _plain(self.key),
            "rows": self.rows,
            "where": [_plain(w) for w in self.where],
        }


@dataclass(frozen=True)
class KeyCheck:
    """Key uniqueness over a domain: extra rows (rows minus distinct keys) and a named sample."""

    domain: str
    key: tuple[str, ...]
    rows: int = 0
    duplicated: int = 0
    samples: tuple[DuplicateKey, ...] = field(default=())
    deleted: int = 0  # merge with tombstones: keys whose one row is a tombstone (marker row)

    @property
    def ok(self) -> bool:
        """No key occurs twice."""
        return self.duplicated == 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "domain": self.domain,
            "key": list(self.key),
            "rows": self.rows,
            "duplicated": self.duplicated,
            "deleted": self.deleted,
            "ok": self.ok,
            "samples": [d.to_json() for d in self.samples],
        }


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        for k, v in doc.items()
    }


def key_index(
    sink: TableReader,
    key: Sequence[str],
    event_time: str,
    version: str | None = None,
    extra: Sequence[str] = (),
) -> pa.Table:
    """Key columns plus lineage (event time, to name a bucket; the merge ``version``; the
    tombstone marker when declared, in ``extra``) of every table row."""
    cols = list(
        dict.fromkeys(
            [*key, event_time, *([version] if version else []), *lineage.COLUMNS, *extra]
        )
    )
    return sink.scan(None, columns=cols)


def check_unique(index: pa.Table, key: Sequence[str], *, merge: bool) -> KeyCheck:
    """Key uniqueness over the domain (see the module doc); names up to ``SAMPLE`` keys."""
    domain = "table" if merge else "archive"
    rows = index if merge else index.filter(pc.equal(index[lineage.SOURCE], "archive"))
    if rows.num_rows == 0:
        return KeyCheck(domain, tuple(key))
    counts = rows.group_by(list(key)).aggregate([([], "count_all")])
    many = counts.filter(pc.greater(counts["count_all"], 1))
    extra = int(pc.sum(pc.subtract(many["count_all"], 1)).as_py() or 0)
    samples = []
    for entry in many.slice(0, SAMPLE).to_pylist():
        k = {c: entry[c] for c in key}
        mask = functools.reduce(
            pc.and_, [pc.equal(rows[c], pa.scalar(k[c], rows[c].type)) for c in key]
        )
        holders = rows.filter(mask)
        where = tuple(
            {c: v for c, v in r.items() if c not in key} for r in holders.slice(0, 5).to_pylist()
        )
        samples.append(DuplicateKey(k, int(entry["count_all"]), where))
    if extra:
        log.warning("duplicate business keys domain=%s extra_rows=%d", domain, extra)
    deleted = 0
    if merge and lineage.DELETED in rows.column_names:  # a marker row is its key's one row
        deleted = int(pc.sum(rows[lineage.DELETED]).as_py() or 0)
    return KeyCheck(domain, tuple(key), rows.num_rows, extra, tuple(samples), deleted)


def _after(holder: list[pa.ChunkedArray], row: list[pa.ChunkedArray]) -> pa.ChunkedArray | pa.Array:
    """Lexicographic ``holder > row`` over order columns, null lowest (the merge writer's
    declared order, ``backfill.sinks.merge``)."""
    greater: pa.Array | pa.ChunkedArray = pa.array([False] * len(row[0]))
    equal: pa.Array | pa.ChunkedArray = pa.array([True] * len(row[0]))
    for h, r in zip(holder, row, strict=True):
        h_null, r_null = pc.is_null(h), pc.is_null(r)
        gt = pc.fill_null(pc.greater(h, r), False)
        gt = pc.or_(gt, pc.and_(pc.invert(h_null), r_null))
        eq = pc.or_(pc.fill_null(pc.equal(h, r), False), pc.and_(h_null, r_null))
        greater = pc.or_(greater, pc.and_(equal, gt))
        equal = pc.and_(equal, eq)
    return greater


def superseded_rows(
    missing: pa.Table, index: pa.Table, key: Sequence[str], version: str | None = None
) -> pa.Table:
    """``(_kafka_partition, _kafka_offset)`` of the ``missing`` source rows superseded (see
    :func:`superseded`), distinct."""
    cols = [lineage.PARTITION, lineage.OFFSET]
    return superseded(missing, index, key, version).select(cols).group_by(cols).aggregate([])


def superseded(
    missing: pa.Table, index: pa.Table, key: Sequence[str], version: str | None = None
) -> pa.Table:
    """The ``missing`` source rows (key columns, lineage, ``version``) whose key the table
    holds from a record later in the declared order: ``version`` (when declared, null
    lowest), then archive < kafka, then partition, then offset. Distinct rows, with the key.

    ``index`` is :func:`key_index`. A key held only by an earlier record is not superseded:
    an older version overwrote a newer one, and that stays lost.
    """
    order = [*([version] if version else []), lineage.SOURCE, lineage.PARTITION, lineage.OFFSET]
    cols = list(dict.fromkeys([*key, *order]))
    if missing.num_rows == 0 or index.num_rows == 0:
        return missing.select(cols).slice(0, 0)
    left = missing.select(cols)
    right = index.select(cols).rename_columns([c if c in key else f"{_HOLDER}{c}" for c in cols])
    joined = left.join(right, list(key), join_type="inner")
    if joined.num_rows == 0:
        return left.slice(0, 0)
    later = _after([joined[f"{_HOLDER}{c}"] for c in order], [joined[c] for c in order])
    found = joined.filter(later).select(cols)
    return found.group_by(cols).aggregate([]).select(cols)
