"""Coverage at the cut: the table's lineage offsets against the source's offset set.

Pure core over sorted numpy arrays (no Python sets). For one partition, with the cut's
``log_start`` and ``hwm`` and the compared upper bound ``end`` (exclusive):

* **source** offsets: those that really hold committed records in ``[log_start, end)`` (read
  committed: transaction markers and aborted records take offsets but hold no record).
* **table** rows: one ``(offset, side)`` per row with ``_kafka_partition`` = the partition and
  ``_kafka_offset < end`` (rows at or above ``end`` are in flight and not compared).
* **quarantined** offsets: records the decoder or the live consumer refused; they are expected
  to be absent from the table.

Counts, each of which must be 0 except ``quarantined`` (informational):

* ``lost``: source offsets that no table row holds and that are not quarantined.
* ``gap``: the lost offsets at the seam, i.e. lost offsets ``o`` with
  ``last_backfill < o < first_live`` where ``last_backfill`` is the highest table offset below
  ``hwm`` (``log_start - 1`` if none) and ``first_live`` the lowest table offset at or above
  ``hwm`` (``end`` if none). ``gap`` is a subset of ``lost``: a record dropped right at the cut
  counts in both.
* ``duplicated``: extra rows written by the *same* side for one offset (rows minus one, summed
  over offsets one side wrote more than once).
* ``overlap``: offsets written by both the backfill and the live side.
* ``phantom``: distinct table offsets that hold no committed source record (e.g. a row from an
  aborted transaction, or a shifted offset), including offsets below ``log_start``.
* ``wrong_side``: rows written by the side that does not own the offset (backfill rows at or
  above ``hwm``, live rows below it).
* ``in_flight``: missing source offsets at or above the live side's committed position
  (``live_position``: the next offset the table says the live consumer will write): the live
  consumer has not reached them yet. They are split off ``lost`` to say *why* a record is
  missing, but they FAIL the run like ``lost``: without ``--min-age`` nothing is hidden.
  (Missing offsets below the live position were skipped: those are ``lost``.)
* ``quarantined``: quarantined source offsets the table does not hold (decoder-refused or
  listed in the dead-letter topic).
* ``superseded`` (merge mode only): source offsets whose business key the table holds from a
  later record (a live row, or a later offset of the same partition): "latest wins".
* ``left_out``: offset positions ``[end, committed_end)`` not compared because their records
  are younger than ``--min-age`` (an upper bound on records: offsets are sparse).

``quarantined``, ``superseded`` and ``left_out`` are informational; every other count fails.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

SAMPLE: Final = 20
FAILING: Final = ("lost", "in_flight", "gap", "duplicated", "overlap", "phantom", "wrong_side")
INFO: Final = ("quarantined", "superseded", "left_out")


@dataclass(frozen=True)
class PartitionCoverage:
    """Coverage counts of one partition, with a bounded sample of offsets per kind."""

    partition: int
    log_start: int
    hwm: int
    end: int
    source_records: int
    table_rows: int
    lost: int = 0
    gap: int = 0
    duplicated: int = 0
    overlap: int = 0
    phantom: int = 0
    wrong_side: int = 0
    quarantined: int = 0
    in_flight: int = 0
    superseded: int = 0
    left_out: int = 0
    samples: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every failing count is zero."""
        return all(getattr(self, k) == 0 for k in FAILING)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        keys = ("partition", "log_start", "hwm", "end", "source_records", "table_rows")
        doc: dict[str, Any] = {k: getattr(self, k) for k in keys}
        doc.update({k: getattr(self, k) for k in (*FAILING, *INFO)})
        doc["ok"] = self.ok
        doc["samples"] = {k: list(v) for k, v in self.samples.items() if v}
        return doc


def _sorted_unique(values: I64 | list[int] | tuple[int, ...]) -> I64:
    return np.unique(np.asarray(values, dtype=np.int64))


def _sample(values: I64) -> tuple[int, ...]:
    return tuple(int(v) for v in values[:SAMPLE])


def _gap(lost: I64, table_offsets: I64, log_start: int, hwm: int, end: int) -> I64:
    below = table_offsets[table_offsets < hwm]
    above = table_offsets[table_offsets >= hwm]
    last_backfill = int(below.max()) if len(below) else log_start - 1
    first_live = int(above.min()) if len(above) else end
    return lost[(lost > last_backfill) & (lost < first_live)]


def _repeated(offsets: I64) -> tuple[I64, int]:
    """Offsets occurring more than once in ``offsets`` and the number of extra rows."""
    uniq, counts = np.unique(offsets, return_counts=True)
    many = counts > 1
    return uniq[many], int((counts[many] - 1).sum())


def compare_offsets(
    partition: int,
    *,
    log_start: int,
    hwm: int,
    end: int,
    source: I64 | list[int],
    table_offsets: I64 | list[int],
    table_live: Bools | list[bool],
    quarantine: I64 | list[int] | tuple[int, ...] = (),
    superseded: I64 | list[int] | tuple[int, ...] = (),
    live_position: int | None = None,
    left_out: int = 0,
) -> PartitionCoverage:
    """Count every kind of the module docstring for one partition.

    ``live_position`` is the live side's committed next offset (``None``: no live split, every
    missing offset is ``lost``); ``superseded`` the offsets a later record replaced (merge).
    """
    src = _sorted_unique(source)
    src = src[(src >= log_start) & (src < end)]
    offs = np.asarray(table_offsets, dtype=np.int64)
    live = np.asarray(table_live, dtype=np.bool_)
    keep = offs < end
    offs, live = offs[keep], live[keep]
    present = np.unique(offs)
    missing = np.setdiff1d(src, present, assume_unique=True)
    is_quarantined = np.isin(missing, _sorted_unique(quarantine), assume_unique=True)
    quarantined, missing = missing[is_quarantined], missing[~is_quarantined]
    is_superseded = np.isin(missing, _sorted_unique(superseded), assume_unique=True)
    replaced, missing = missing[is_superseded], missing[~is_superseded]
    waiting = missing >= live_position if live_position is not None else missing < 0
    in_flight, lost = missing[waiting], missing[~waiting]
    dup_back, extra_back = _repeated(offs[~live])
    dup_live, extra_live = _repeated(offs[live])
    overlap = np.intersect1d(offs[~live], offs[live])
    phantom = np.setdiff1d(present, src, assume_unique=True)
    wrong = np.sort(np.concatenate([offs[~live & (offs >= hwm)], offs[live & (offs < hwm)]]))
    gap = _gap(lost, offs, log_start, hwm, end)
    samples = {
        "lost": _sample(lost),
        "gap": _sample(gap),
        "duplicated": _sample(np.union1d(dup_back, dup_live)),
        "overlap": _sample(overlap),
        "phantom": _sample(phantom),
        "wrong_side": _sample(wrong),
        "quarantined": _sample(quarantined),
        "in_flight": _sample(in_flight),
        "superseded": _sample(replaced),
    }
    return PartitionCoverage(
        partition=partition,
        log_start=log_start,
        hwm=hwm,
        end=end,
        source_records=len(src),
        table_rows=len(offs),
        lost=len(lost),
        gap=len(gap),
        duplicated=extra_back + extra_live,
        overlap=len(overlap),
        phantom=len(phantom),
        wrong_side=len(wrong),
        quarantined=len(quarantined),
        in_flight=len(in_flight),
        superseded=len(replaced),
        left_out=left_out,
        samples=samples,
    )
