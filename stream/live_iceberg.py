"""Iceberg side of the live writer: append with offsets, atomically conditional on the table.

Every live append stores, in ONE catalog commit:

* the rows (a fast/merge append),
* the batch's :class:`CommitToken` in the snapshot's summary properties,
* the next offset of every partition in the batch as a table property
  ``seamline.live.offset.<partition>`` (table properties survive snapshot expiry and are found
  even when the newest snapshot was made by the backfill), and
* a requirement, :class:`AssertLiveOffsets`, that each range of the token starts exactly at
  the table's current offset for its partition.

The SQL catalog validates requirements against the freshly loaded metadata and then swaps the
metadata pointer with a compare-and-set, so two live processes that both read the same range
(a zombie after a rebalance) can never both commit it: the loser fails with
:class:`LiveOffsetsMovedError`, certainly not applied. pyiceberg's own retry-on-conflict rebases
an append onto a concurrent commit; our requirement is kept across those retries, and one
property per partition means concurrent appenders of disjoint partitions never clobber each
other's offsets.

Commit cost is kept flat by table-side maintenance (:meth:`IcebergLiveTable.maintain`):
manifest merging, keeping few metadata files and expiring old snapshots.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.table import Table
from pyiceberg.table.update import ValidatableTableRequirement

from backfill.sink_common import conform
from coordinator.errors import CommitConflictError, CommitOutcomeUnknownError, WriterError
from coordinator.ports import CommitRecord
from coordinator.values import CommitToken, Offset, PartitionId, SnapshotId

log = logging.getLogger(__name__)

LIVE_OFFSET_PREFIX = "seamline.live.offset."

#: Table properties that keep commit cost flat (DESIGN §8).
MAINTENANCE_PROPERTIES: dict[str, str] = {
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "20",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "10",
}


class LiveOffsetsMovedError(ValidationException):  # type: ignore[misc]
    """The table's live offset of a partition is not where the batch starts."""


def live_offsets_from_properties(props: Mapping[str, str]) -> dict[PartitionId, Offset]:
    """``{partition: next offset}`` from table properties."""
    out: dict[PartitionId, Offset] = {}
    for key, value in props.items():
        if key.startswith(LIVE_OFFSET_PREFIX):
            out[PartitionId(int(key[len(LIVE_OFFSET_PREFIX) :]))] = Offset(int(value))
    return out


def live_offset_properties(token: CommitToken) -> dict[str, str]:
    """The table properties recording the end of each of ``token``'s ranges."""
    return {f"{LIVE_OFFSET_PREFIX}{r.partition}": str(r.end) for r in token.ranges}


class AssertLiveOffsets(ValidatableTableRequirement):  # type: ignore[misc]
    """Requirement: each partition's live offset equals ``expected`` (``-1``: not yet set).

    Only meaningful to catalogs that validate requirements themselves (the SQL catalog does:
    it loads the current metadata, validates, then compare-and-swaps the metadata location).
    """

    type: Literal["assert-seamline-live-offsets"] = "assert-seamline-live-offsets"
    expected: dict[str, int]

    def validate(self, base_metadata: Any) -> None:  # type: ignore[override]
        """Raise :class:`LiveOffsetsMovedError` when any partition moved."""
        props = base_metadata.properties if base_metadata is not None else {}
        for key, want in self.expected.items():
            found = int(props.get(key, "-1"))
            if found != want:
                raise LiveOffsetsMovedError(
                    f"live offset {key}: expected {want}, found {found} "
                    "(another live consumer committed this range)"
                )


def _expected(token: CommitToken, current: Mapping[PartitionId, Offset]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in token.ranges:
        key = f"{LIVE_OFFSET_PREFIX}{r.partition}"
        out[key] = r.start if r.partition in current else -1
    return out


class IcebergLiveTable:
    """Live appends and live offsets of one Iceberg table (see module docstring)."""

    def __init__(
        self,
        table: Table,
        *,
        keep_snapshots: int = 20,
        expire_every: int = 50,
        min_snapshot_age_s: float = 60.0,
        sort_by: str | None = None,
    ) -> None:
        self._table = table
        self._sort_by = sort_by
        self._keep = keep_snapshots
        self._expire_every = expire_every
        self._min_age_s = min_snapshot_age_s
        self._commits = 0

    @property
    def table(self) -> Table:
        """The pyiceberg table (refreshed by each call here)."""
        return self._table

    def ensure_maintenance_properties(self) -> None:
        """Set the manifest-merge and metadata-cleanup properties if they differ."""
        self._table.refresh()
        props = self._table.metadata.properties
        missing = {k: v for k, v in MAINTENANCE_PROPERTIES.items() if props.get(k) != v}
        if missing:
            with self._table.transaction() as txn:
                txn.set_properties(missing)

    def live_offsets(self) -> dict[PartitionId, Offset]:
        """Next offset per partition from the table's properties (freshly loaded)."""
        self._table.refresh()
        return live_offsets_from_properties(self._table.metadata.properties)

    def append_live(self, data: pa.Table, token: CommitToken) -> CommitRecord:
        """Append ``data`` if the table's offsets are exactly where ``token``'s ranges start.

        Raises ``CommitConflictError`` when another consumer moved an offset (certainly not
        applied: re-read :meth:`live_offsets`), ``CommitOutcomeUnknownError`` when the outcome
        is unknown (look the token up with :meth:`find_commit`).
        """
        if token.side != "live" or not token.ranges:
            raise WriterError(
                f"slice={token.slice_id}: expected a live token with ranges, found "
                f"side={token.side} ranges={len(token.ranges)}"
            )
        self._table.refresh()
        current = live_offsets_from_properties(self._table.metadata.properties)
        requirement = AssertLiveOffsets(expected=_expected(token, current))
        rows = self._conform(data)
        try:
            with self._table.transaction() as txn:
                txn._stage((), (requirement,))  # type: ignore[arg-type]  # validated now and again by the catalog
                txn.set_properties(live_offset_properties(token))
                txn.append(rows, snapshot_properties=token.to_properties())
        except (LiveOffsetsMovedError, CommitFailedException) as exc:
            raise CommitConflictError(
                f"slice={token.slice_id}: live commit not applied ({exc})",
                hint="re-read the table's live offsets and re-seek",
            ) from exc
        except OSError as exc:
            raise CommitOutcomeUnknownError(
                f"slice={token.slice_id}: live commit outcome unknown ({exc})",
                hint="look the token up with find_commit before retrying",
            ) from exc
        snap = self._table.current_snapshot()
        self._commits += 1
        if self._expire_every and self._commits % self._expire_every == 0:
            self.maintain()
        return CommitRecord(
            token=token,
            snapshot_id=SnapshotId(snap.snapshot_id if snap else 0),
            committed_at=datetime.now(UTC),
            rows=data.num_rows,
        )

    def _conform(self, data: pa.Table) -> pa.Table:
        try:
            return conform(data, self._table.schema().as_arrow(), sort_by=self._sort_by)
        except (ValueError, TypeError, pa.ArrowInvalid) as exc:
            raise WriterError(
                f"table={self._table.name()}: live rows do not fit the table schema ({exc})",
                hint="check the transform returns the job's schema",
            ) from None

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None:
        """The newest snapshot carrying this token, or ``None``."""
        self._table.refresh()
        for snap in sorted(self._table.snapshots(), key=lambda s: -s.timestamp_ms):
            props = dict(snap.summary.additional_properties) if snap.summary else {}
            token = CommitToken.from_properties(props)
            if token and token.job_id == job_id and token.slice_id == slice_id:
                return CommitRecord(
                    token=token,
                    snapshot_id=SnapshotId(snap.snapshot_id),
                    committed_at=datetime.fromtimestamp(snap.timestamp_ms / 1000, UTC),
                )
        return None

    def maintain(self) -> int:
        """Expire all but the newest ``keep_snapshots`` snapshots older than the minimum age.

        The live offsets live in table properties, so expiry never loses them. Returns the
        number of snapshots expired; a conflict with a concurrent writer just skips this round.
        """
        self._table.refresh()
        snaps = sorted(self._table.snapshots(), key=lambda s: s.timestamp_ms)
        cutoff_ms = (datetime.now(UTC).timestamp() - self._min_age_s) * 1000
        current = self._table.current_snapshot()
        old = [
            s.snapshot_id
            for s in snaps[: max(0, len(snaps) - self._keep)]
            if s.timestamp_ms < cutoff_ms
            and (current is None or s.snapshot_id != current.snapshot_id)
        ]
        if not old:
            return 0
        try:
            self._table.maintenance.expire_snapshots().by_ids(old).commit()
        except (CommitFailedException, ValidationException, ValueError) as exc:
            log.info("snapshot expiry skipped this round: %s", exc)
            return 0
        log.debug("expired %d snapshots", len(old))
        return len(old)
