"""The reconciliation report: frozen values, JSON form, and the overall verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from coordinator.core.values import OffsetRange, Scope
from reconcile.checksum import SCHEME, Checksum
from reconcile.coverage import FAILING, INFO, PartitionCoverage
from reconcile.drilldown import DrillDown
from reconcile.keys import KeyCheck

UnitKind = Literal["history", "archive", "live", "unplanned"]


def describe_scope(scope: Scope) -> str:
    """Short human form of a scope, e.g. ``p0[0,500)`` or ``2024010100-2024010200``."""
    if scope.bucket is not None and scope.key is not None:
        values = ",".join(repr(v) for v in scope.key.values)
        return f"{scope.bucket.label()} {scope.key.column} in ({values})"
    if scope.bucket is not None:
        return scope.bucket.label()
    return " ".join(f"p{r.partition}[{r.start},{r.end})" for r in scope.ranges)


@dataclass(frozen=True)
class SliceReport:
    """Both sides of one slice (or a pseudo-slice: a live chunk or an unplanned range)."""

    slice_id: str
    kind: UnitKind
    scope: str
    source: Checksum
    table: Checksum
    quarantined: int = 0
    duplicate_keys: int = 0
    drilldown: DrillDown | None = None
    ranges: tuple[OffsetRange, ...] = ()
    superseded: int = 0  # merge mode: source rows a later record of the same key replaced
    tombstones: int = 0  # merge mode with delete_when: source records that delete their key

    @property
    def matches(self) -> bool:
        """Counts and both checksums equal, and no duplicate business keys."""
        return self.source == self.table and self.duplicate_keys == 0

    @property
    def verdict(self) -> Literal["match", "mismatch"]:
        """``match`` or ``mismatch``."""
        return "match" if self.matches else "mismatch"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "slice_id": self.slice_id,
            "kind": self.kind,
            "scope": self.scope,
            "verdict": self.verdict,
            "source": self.source.to_json(),
            "table": self.table.to_json(),
            "quarantined": self.quarantined,
            "duplicate_keys": self.duplicate_keys,
            "superseded": self.superseded,
            "tombstones": self.tombstones,
            "drilldown": self.drilldown.to_json() if self.drilldown else None,
        }


@dataclass(frozen=True)
class ReconcileReport:
    """Everything one reconciliation found; ``reconciled`` only when every part passed."""

    job_id: str
    topic: str
    run_at: datetime
    min_age_s: float
    slices: tuple[SliceReport, ...]
    partitions: tuple[PartitionCoverage, ...]
    scheme: str = SCHEME
    notes: tuple[str, ...] = field(default=())
    keys: KeyCheck | None = None  # business-key uniqueness (archive rows, or table in merge)
    dead_letter_topic: str | None = None  # None: quarantine given by the caller
    dead_letters: int = 0  # distinct (partition, offset) listed as quarantined by the writers

    @property
    def reconciled(self) -> bool:
        """Every slice matches, every partition's coverage is clean, keys are unique."""
        keys_ok = self.keys is None or self.keys.ok
        return (
            keys_ok and all(s.matches for s in self.slices) and all(p.ok for p in self.partitions)
        )

    @property
    def mismatched(self) -> Sequence[SliceReport]:
        """The slices that did not match."""
        return [s for s in self.slices if not s.matches]

    def totals(self) -> dict[str, int]:
        """Summed counts over partitions and slices.

        The one definition of the "source" totals that the terminal, the JSON and the HTML
        report all print (nothing else sums them):

        * ``source_records``: every record of the source the job covers, ``archive_records``
          (archive rows) plus ``kafka_records`` (Kafka offsets holding a committed record,
          below and above the cut). A quarantined record is a source record: ``quarantined``
          says how many of them the table does not hold because the decoder refused them.
        * ``tombstones`` (merge mode with ``[table] delete_when``): source records that are
          delete markers (counted in the records above, and kept apart here); ``deleted_keys``:
          keys whose one table row is a tombstone's marker row (neither lost nor duplicated).
        * ``source_rows`` / ``table_rows``: the rows the compared units hold on each side
          (quarantined records yield no source row).
        * ``slices``: the planned slices (archive buckets and Kafka ranges below the cut);
          ``live_units``: the live and unplanned ranges compared beyond the plan. Live units are
          never counted as slices.
        """
        out = {k: sum(getattr(p, k) for p in self.partitions) for k in (*FAILING, *INFO)}
        out["duplicate_keys"] = self.keys.duplicated if self.keys else 0
        out["archive_records"] = sum(s.source.rows for s in self.slices if s.kind == "archive")
        out["kafka_records"] = sum(p.source_records for p in self.partitions)
        out["source_records"] = out["archive_records"] + out["kafka_records"]
        out["source_rows"] = sum(s.source.rows for s in self.slices)
        out["table_rows"] = sum(s.table.rows for s in self.slices)
        out["slices"] = sum(1 for s in self.slices if s.kind in ("archive", "history"))
        out["live_units"] = len(self.slices) - out["slices"]
        out["mismatched_slices"] = len(self.mismatched)
        out["archive_quarantined"] = sum(s.quarantined for s in self.slices if s.kind == "archive")
        out["tombstones"] = sum(s.tombstones for s in self.slices)
        out["deleted_keys"] = self.keys.deleted if self.keys else 0
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form: top-level ``reconciled``, per-slice and per-partition counts."""
        return {
            "reconciled": self.reconciled,
            "job_id": self.job_id,
            "topic": self.topic,
            "scheme": self.scheme,
            "run_at": self.run_at.isoformat(),
            "min_age_s": self.min_age_s,
            "totals": self.totals(),
            "keys": self.keys.to_json() if self.keys else None,
            "dead_letter_topic": self.dead_letter_topic,
            "dead_letters": self.dead_letters,
            "partitions": [p.to_json() for p in self.partitions],
            "slices": [s.to_json() for s in self.slices],
            "notes": list(self.notes),
        }
