"""Business keys across the table: uniqueness (duplicates named) and merge-mode supersession.

Both need one pass over the whole table's key columns plus lineage (the *key index*): memory
is O(table rows x key width), the one place the reconciler is not O(slice). It is built only
when the job declares ``table.key`` and the run needs it (archive slices or merge mode).

* **Uniqueness**: every business key must occur once in its *domain*. In merge mode (archive
  and topic matched by key, DESIGN §1) the domain is the whole table; otherwise the archive
  rows (a Kafka topic is an event log: one key may legitimately appear at many offsets).
* **Superseded** (merge mode only): a merge writer does not write a backfill row whose key a
  live row already holds ("live wins"), and replaces an earlier backfill row of the same key.
  A source record missing from the table is *superseded*, not lost, when the table holds its
  key from a later record: a live row, or a row of the same partition at a higher offset.
  A key held only by an EARLIER record means an older value overwrote a newer one: still lost.
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
            "ok": self.ok,
            "samples": [d.to_json() for d in self.samples],
        }


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        for k, v in doc.items()
    }


def key_index(sink: TableReader, key: Sequence[str], event_time: str) -> pa.Table:
    """Key columns plus lineage (and event time, to name a bucket) of every table row."""
    cols = list(dict.fromkeys([*key, event_time, *lineage.COLUMNS]))
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
    return KeyCheck(domain, tuple(key), rows.num_rows, extra, tuple(samples))


def superseded_rows(missing: pa.Table, index: pa.Table, key: Sequence[str]) -> pa.Table:
    """``(_kafka_partition, _kafka_offset)`` of the ``missing`` source rows whose key the table
    holds from a later record (distinct rows).

    ``missing`` holds source rows (key columns and lineage) absent from the table; ``index``
    is :func:`key_index`.
    """
    lineage_cols = [lineage.PARTITION, lineage.OFFSET]
    empty = missing.select(lineage_cols).schema.empty_table()
    if missing.num_rows == 0 or index.num_rows == 0:
        return empty
    left = missing.select([*key, *lineage_cols])
    right = index.select([*key, *lineage_cols, lineage.SIDE]).rename_columns(
        [*key, f"{_HOLDER}p", f"{_HOLDER}o", f"{_HOLDER}side"]
    )
    joined = left.join(right, list(key), join_type="inner")
    if joined.num_rows == 0:
        return empty
    later = pc.or_(
        pc.equal(joined[f"{_HOLDER}side"], "live"),
        pc.and_(
            pc.equal(joined[f"{_HOLDER}p"], joined[lineage.PARTITION]),
            pc.greater(joined[f"{_HOLDER}o"], joined[lineage.OFFSET]),
        ),
    )
    found = joined.filter(pc.fill_null(later, False)).select(lineage_cols)
    return found.group_by(lineage_cols).aggregate([])
