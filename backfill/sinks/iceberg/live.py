"""Live appends to an Iceberg table, conditional on the table's live offsets (DESIGN §3).

The one implementation of the live side's table code for Iceberg: :class:`IcebergSink`
(``backfill.sinks.iceberg.sink``) delegates to it, and ``stream.live_iceberg`` re-exports it.

Every live append stores, in ONE catalog commit:

* the rows (an append),
* the batch's :class:`CommitToken` in the snapshot's summary properties,
* the next offset of each partition *in the batch* as a table property
  ``seamline.live.offset.<partition>`` (table properties survive snapshot expiry and are
  found even when the newest snapshot was made by the backfill), and
* a requirement, :class:`AssertLiveOffsets`, that each range of the token starts exactly at
  the table's current offset for its partition.

The SQL catalog validates requirements against the freshly loaded metadata and then swaps the
metadata pointer with a compare-and-set, so two live processes that both read the same range
(a zombie after a rebalance) can never both commit it: the loser fails with
:class:`LiveOffsetsMovedError`, certainly not applied, and that is the only error reported as
"offsets moved". A concurrent snapshot expiry that removes the snapshot an append started from
(pyiceberg: "Cannot find starting snapshot") is a retryable conflict, retried from a fresh
reload (:class:`BaseSnapshotExpiredError`). pyiceberg's retry-on-conflict rebases an
append onto a concurrent commit and keeps the requirement, and because only the batch's own
partitions are written, concurrent appenders of disjoint partitions never move each other's
offsets backwards.

Commit cost is kept flat by :meth:`IcebergLiveTable.maintain` (snapshot expiry) and the
manifest-merge / metadata-cleanup table properties :data:`MAINTENANCE_PROPERTIES`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.table.update import ValidatableTableRequirement
from pyiceberg.utils.properties import property_as_bool

from backfill.sinks import common, merge
from backfill.sinks.iceberg.merge import merge_lock, stage_merge
from backfill.sinks.iceberg.write import CachedTransaction, write_data_files
from coordinator.core.errors import CommitConflictError, CommitOutcomeUnknownError, WriterError
from coordinator.core.ports import CommitRecord
from coordinator.core.values import CommitToken, Offset, PartitionId, SnapshotId

log = logging.getLogger(__name__)

LIVE_OFFSET_PREFIX = common.LIVE_OFFSET_PREFIX

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
    return common.parse_live_offsets(props)


def live_offset_properties(token: CommitToken) -> dict[str, str]:
    """The table properties recording the end of each of ``token``'s ranges."""
    return common.live_offset_properties(token)


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


class MergeConflictError(Exception):
    """A live merge met a concurrent commit touching its keys: certainly not applied; the
    merge is re-planned on the new snapshot."""


class BaseSnapshotExpiredError(Exception):
    """The snapshot an append was built on was expired by a concurrent maintenance (pyiceberg's
    own rebase then fails with "Cannot find starting snapshot"): certainly not applied."""


def _is_retryable(exc: BaseException) -> bool:
    """Certainly not applied and worth a retry with freshly loaded metadata: a lost
    compare-and-set after pyiceberg's own rebases, or a base snapshot expired concurrently."""
    return isinstance(exc, CommitFailedException | BaseSnapshotExpiredError | MergeConflictError)


def _expected(token: CommitToken, current: Mapping[PartitionId, Offset]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in token.ranges:
        out[f"{LIVE_OFFSET_PREFIX}{r.partition}"] = r.start if r.partition in current else -1
    return out


def snapshot_record(snap: Snapshot) -> CommitRecord | None:
    """The seamline commit a snapshot carries, or ``None``."""
    props: dict[str, Any] = dict(snap.summary.additional_properties) if snap.summary else {}
    token = CommitToken.from_properties(props)
    if token is None:
        return None
    added = props.get("added-records")
    return CommitRecord(
        token=token,
        snapshot_id=SnapshotId(snap.snapshot_id),
        committed_at=common.ms_to_datetime(snap.timestamp_ms),
        rows=int(added) if added is not None else None,
    )


def snapshot_records(table: Table) -> Iterator[CommitRecord]:
    """Seamline commits in the table's (already loaded) snapshot history, newest first."""
    snaps = sorted(table.snapshots(), key=lambda s: (s.sequence_number or 0, s.timestamp_ms))
    for snap in reversed(snaps):
        rec = snapshot_record(snap)
        if rec is not None:
            yield rec


def committed_record(table: Table, token: CommitToken) -> CommitRecord | None:
    """The record of ``token`` right after ``table`` committed it: its current snapshot (O(1));
    falls back to a history scan only if the current snapshot carries another token."""
    snap = table.current_snapshot()
    rec = snapshot_record(snap) if snap is not None else None
    if rec is not None and rec.token == token:
        return rec
    return next((r for r in snapshot_records(table) if r.token == token), None)


class IcebergLiveTable:
    """Live appends, live offsets and maintenance of one Iceberg table (module docstring)."""

    def __init__(
        self,
        table: Table,
        *,
        keep_snapshots: int = 20,
        expire_every: int = 50,
        min_snapshot_age_s: float = 60.0,
        sort_by: str | None = None,
        merge_rule: merge.MergeRule | None = None,
    ) -> None:
        self._table = table
        self._sort_by = sort_by
        self._merge = merge_rule
        self.policy = common.MaintenancePolicy(keep_snapshots, expire_every, min_snapshot_age_s)
        self.retry = common.DEFAULT_RETRY
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

        Raises ``CommitConflictError`` when another consumer moved an offset or conflicts
        persisted (certainly not applied: re-read :meth:`live_offsets`),
        ``CommitOutcomeUnknownError`` when the outcome is unknown and the token is not in the
        table (look it up later with :meth:`find_commit`), ``WriterError`` for bad input.
        """
        if token.side != "live" or not token.ranges:
            raise WriterError(
                f"slice_id={token.slice_id}: expected a live token with ranges, found "
                f"side={token.side} ranges={len(token.ranges)}"
            )
        what = f"table={self._table.name()} slice_id={token.slice_id}"
        self._table.refresh()
        rows = self._conform(data)
        try:
            commit = self._committer(rows, token)
            common.retry_conflicts(what, commit, _is_retryable, self.retry)
        except LiveOffsetsMovedError as exc:  # an offset moved: certainly not applied
            raise CommitConflictError(
                f"{what}: live commit not applied ({exc})",
                hint="re-read the table's live offsets and re-seek",
            ) from exc
        except ValidationException as exc:  # any other validation failure: not applied
            raise CommitConflictError(
                f"{what}: live commit not applied, expected a valid commit, found a "
                f"validation failure ({exc})",
                hint="re-read the table's live offsets and retry the batch",
            ) from exc
        except WriterError:
            raise
        except (ValueError, TypeError) as exc:  # refused before anything was committed
            raise WriterError(f"{what}: live write refused ({type(exc).__name__}: {exc})") from exc
        except Exception as exc:
            return self._resolve_unknown(token, exc)
        rec = committed_record(self._table, token)
        if rec is None:
            raise WriterError(
                f"slice_id={token.slice_id}: expected the committed token in the table, found none"
            )
        self._commits += 1
        every = self.policy.every_commits
        if every and self._commits % every == 0:
            try:
                self.maintain()
            except Exception as exc:  # the commit landed; maintenance retries next round
                log.warning("table maintenance failed after a live commit: %s", exc)
        return rec

    def _committer(self, rows: pa.Table, token: CommitToken) -> Callable[[], None]:
        """One commit attempt: an append of files written once, or (merge mode) a merge
        re-planned against the snapshot each attempt commits on."""
        if self._merge is None:
            files = write_data_files(self._table, rows)  # once; conflict retries re-use them
            return lambda: self._commit_files(files, token)
        batch = merge.dedupe(rows, self._merge)

        def attempt() -> None:
            with merge_lock(self._table):  # fair turns with history merges on this host
                self._commit_files(batch, token)

        return attempt

    def _commit_files(self, files: list[DataFile] | pa.Table, token: CommitToken) -> None:
        """One conditional commit of ``files`` at the table's current live offsets.

        A ``ValidationException`` other than :class:`LiveOffsetsMovedError` is classified by
        cause: when the snapshot this attempt started from is gone from freshly loaded
        metadata (a concurrent snapshot expiry), it becomes :class:`BaseSnapshotExpiredError`
        (retried from a fresh reload); otherwise it propagates.
        """
        self._table.refresh()
        base = self._table.current_snapshot()
        try:
            self._commit_at_current(files, token)
        except LiveOffsetsMovedError:
            raise
        except ValidationException as exc:
            if self._merge is not None and (
                base is None or self._snapshot_exists(base.snapshot_id)
            ):
                raise MergeConflictError(
                    f"live merge: concurrent commit on its keys ({exc})"
                ) from exc
            if base is None or self._snapshot_exists(base.snapshot_id):
                raise
            log.info(
                "base snapshot expired concurrently, retrying: snapshot_id=%d", base.snapshot_id
            )
            raise BaseSnapshotExpiredError(
                f"snapshot_id={base.snapshot_id}: expected the append's base snapshot in the "
                f"table, found it expired ({exc})"
            ) from exc

    def _snapshot_exists(self, snapshot_id: int) -> bool:
        self._table.refresh()
        return self._table.metadata.snapshot_by_id(snapshot_id) is not None

    def _commit_at_current(self, files: list[DataFile] | pa.Table, token: CommitToken) -> None:
        current = live_offsets_from_properties(self._table.metadata.properties)
        requirement = AssertLiveOffsets(expected=_expected(token, current))
        merge = property_as_bool(
            self._table.metadata.properties,
            TableProperties.MANIFEST_MERGE_ENABLED,
            TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT,
        )
        with CachedTransaction(self._table) as txn:
            txn._stage((), (requirement,))  # type: ignore[arg-type]  # catalog re-validates
            txn.set_properties(live_offset_properties(token))
            if isinstance(files, pa.Table):  # merge mode: plan on this snapshot
                assert self._merge is not None
                props = token.to_properties()
                stage_merge(txn, self._table, files, self._merge, props, self._sort_by)
                return
            update = txn.update_snapshot(snapshot_properties=token.to_properties())
            with update.merge_append() if merge else update.fast_append() as append:
                for data_file in files:
                    append.append_data_file(data_file)

    def _resolve_unknown(self, token: CommitToken, exc: Exception) -> CommitRecord:
        try:
            self._table.refresh()
            found = self.find_exact(token)
        except Exception:  # the catalog is still unreachable: the outcome stays unknown
            found = None
        if found is not None:
            log.warning("live commit reported %s but the token landed", exc)
            return found
        raise CommitOutcomeUnknownError(
            f"table={self._table.name()} slice_id={token.slice_id}: live commit outcome "
            f"unknown ({type(exc).__name__}: {exc})",
            hint="look the token up with find_commit before retrying; never delete files",
        ) from exc

    def _conform(self, data: pa.Table) -> pa.Table:
        try:
            return common.conform(data, self._table.schema().as_arrow(), sort_by=self._sort_by)
        except (ValueError, TypeError, pa.ArrowInvalid) as exc:
            raise WriterError(
                f"table={self._table.name()}: live rows do not fit the table schema ({exc})",
                hint="check the transform returns the job's schema",
            ) from None

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None:
        """The newest snapshot carrying this slice's token, or ``None`` (scans the history
        held in the metadata: call it on unknown outcomes and restarts, not per commit)."""
        self._table.refresh()
        for rec in snapshot_records(self._table):
            if rec.token.job_id == job_id and rec.token.slice_id == slice_id:
                return rec
        return None

    def find_exact(self, token: CommitToken) -> CommitRecord | None:
        """The snapshot carrying exactly ``token`` in the loaded metadata, or ``None``."""
        return next((r for r in snapshot_records(self._table) if r.token == token), None)

    def maintain(self) -> int:
        """Expire all but the newest ``keep_versions`` snapshots older than ``min_age_s``.

        The live offsets live in table properties, so expiry never loses them. Returns the
        number of snapshots expired; a conflict with a concurrent writer skips this round.
        """
        self._table.refresh()
        snaps = sorted(self._table.snapshots(), key=lambda s: s.timestamp_ms)
        cutoff_ms = (datetime.now(UTC).timestamp() - self.policy.min_age_s) * 1000
        current = self._table.current_snapshot()
        keep = self.policy.keep_versions
        old = [
            s.snapshot_id
            for s in snaps[: max(0, len(snaps) - keep)]
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
