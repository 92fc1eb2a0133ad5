"""Live appends to an Iceberg table, conditional on the table's live offsets (DESIGN §3).

The one implementation of the live side's table code for Iceberg: :class:`IcebergSink`
(``backfill.sinks.iceberg.sink``) delegates to it, and ``stream.live_iceberg`` re-exports it.

Every live append stores, in ONE catalog commit, through pyiceberg's public transaction API:

* the rows (an append of data files written once, before the first attempt),
* the batch's :class:`CommitToken` in the snapshot's summary properties (its offset ranges per
  partition included), and
* the next offset of each partition *in the batch* as a table property
  ``seamline.live.offset.<partition>`` (table properties survive snapshot expiry and are
  found even when the newest snapshot was made by the backfill).

Exactly once, on any catalog: the offsets are validated on the loaded metadata, and the commit
is based on that metadata. Every snapshot producer sends ``AssertRefSnapshotId`` for ``main``
(the catalog refuses the commit if main moved since), and every commit that moves a live offset
adds a snapshot (a batch with zero good rows too), so "main did not move" implies "the offsets
did not move". pyiceberg's own retry, which would rebase the append onto the new head and skip
that check, is switched off by the table property ``commit.retry.num-retries = 0``
(:data:`NO_LIBRARY_RETRY`, checked on the exact metadata each commit is based on). On a
conflict seamline reloads, re-validates the offsets and retries: a partition that moved is
:class:`LiveOffsetsMovedError` (another consumer committed the range; certainly not applied),
anything else (a backfill commit, a compaction, a snapshot expiry) is retried from the new head.
Concurrent appenders of disjoint partitions never move each other's offsets backwards.

**Merge mode** (``merge_rule`` set): each attempt plans the batch on the head (reads the
versions of the batch's keys, decides the winners under the declared order, writes the files:
``backfill.sinks.iceberg.merge.MergePlanner``), then, under the table's host-local merge lock
(shared with history merge slices), reloads the table; if the head moved it plans again outside
the lock (bounded rounds, then under it: ``merge_turn``; only the files added since are read),
then re-validates the offsets and commits "replace the files holding
losing rows, add the winners, move the offsets" in one snapshot. The same ``AssertRefSnapshotId`` makes a plan made on an older
head fail as a conflict, so a late correction replaces the backfilled row and an older live
version never overwrites a newer history row.

Commit cost is kept flat by :meth:`IcebergLiveTable.maintain` (snapshot expiry) and the
manifest-merge / metadata-cleanup table properties :data:`MAINTENANCE_PROPERTIES`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.utils.properties import property_as_bool

from backfill.sinks import common, merge
from backfill.sinks.iceberg.internals import CachedTransaction, write_data_files
from backfill.sinks.iceberg.merge import MergePlanner, merge_turn
from coordinator.core.errors import CommitConflictError, CommitOutcomeUnknownError, WriterError
from coordinator.core.faults import crash_point
from coordinator.core.ports import CommitRecord
from coordinator.core.values import CommitToken, Offset, PartitionId, SnapshotId

log = logging.getLogger(__name__)

LIVE_OFFSET_PREFIX = common.LIVE_OFFSET_PREFIX

#: pyiceberg's commit retry rebases a snapshot onto whatever moved ``main`` without asking
#: us: off, seamline retries every conflict itself after re-validating (module docstring).
NO_LIBRARY_RETRY: dict[str, str] = {TableProperties.COMMIT_NUM_RETRIES: "0"}

#: Table properties that keep commit cost flat (DESIGN §8) and commits seamline's own.
MAINTENANCE_PROPERTIES: dict[str, str] = {
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "20",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "10",
    **NO_LIBRARY_RETRY,
}


class LiveOffsetsMovedError(Exception):
    """The table's live offset of a partition is not where the batch starts."""


def live_offsets_from_properties(props: Mapping[str, str]) -> dict[PartitionId, Offset]:
    """``{partition: next offset}`` from table properties."""
    return common.parse_live_offsets(props)


def live_offset_properties(token: CommitToken) -> dict[str, str]:
    """The table properties recording the end of each of ``token``'s ranges."""
    return common.live_offset_properties(token)


def _is_retryable(exc: BaseException) -> bool:
    """Certainly not applied and worth a retry after a reload: the catalog refused the commit
    because ``main`` moved (or another requirement failed)."""
    return isinstance(exc, CommitFailedException)


def ensure_no_library_retry(table: Table) -> None:
    """Set :data:`NO_LIBRARY_RETRY` if ``table``'s loaded metadata lacks it (a property-only
    commit: ``main`` does not move; callers validate on the metadata it leaves loaded)."""
    props = table.metadata.properties
    if all(props.get(k) == v for k, v in NO_LIBRARY_RETRY.items()):
        return
    with table.transaction() as txn:
        txn.set_properties(NO_LIBRARY_RETRY)


def check_offsets(token: CommitToken, current: Mapping[PartitionId, Offset]) -> None:
    """Raise :class:`LiveOffsetsMovedError` unless every range of ``token`` starts at the
    table's live offset of its partition (a partition without one may start anywhere)."""
    moved = common.moved_partitions(token, dict(current))
    if moved:
        desc = ", ".join(f"partition={p}: expected {s}, found {f}" for p, s, f in moved)
        raise LiveOffsetsMovedError(
            f"live offsets moved ({desc}; another live consumer committed this range)"
        )


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

    def _locked_commit(self, files: list[DataFile], token: CommitToken) -> None:
        """One commit attempt holding the table's host-local commit lock: fair turns with a
        write-audit-publish commit, which takes it too (no-op for remote locations)."""
        with common.location_lock(self._table.metadata.location, "commit"):
            self._commit_once(files, token)

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
            check_offsets(token, self.loaded_offsets())  # a zombie writes no files
            if self._merge is not None:
                planner = MergePlanner(merge.dedupe(rows, self._merge), self._merge, self._sort_by)
                common.retry_conflicts(
                    what, lambda: self._merge_once(planner, token), _is_retryable, self.retry
                )
            else:
                files = write_data_files(self._table, rows)  # once; retries re-use them
                common.retry_conflicts(
                    what, lambda: self._locked_commit(files, token), _is_retryable, self.retry
                )
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
                self.maintain_table()
            except Exception as exc:  # the commit landed; maintenance retries next round
                log.warning("table maintenance failed after a live commit: %s", exc)
        return rec

    def loaded_offsets(self) -> dict[PartitionId, Offset]:
        """Next offset per partition in the metadata loaded now (no reload)."""
        return live_offsets_from_properties(self._table.metadata.properties)

    def _commit_once(self, files: list[DataFile], token: CommitToken) -> None:
        """One commit attempt on the loaded metadata: library retry off, offsets re-validated
        on exactly that metadata, ``main`` asserted unmoved by the catalog. A refused commit
        reloads, so the next attempt re-validates on the new head."""
        ensure_no_library_retry(self._table)
        check_offsets(token, self.loaded_offsets())
        try:
            self._commit_at_head(files, token)
        except CommitFailedException:
            self._table.refresh()
            raise

    def _merge_once(self, planner: MergePlanner, token: CommitToken) -> None:
        """One merge attempt (module docstring): read, decided and written on the head outside
        the merge lock, committed under it on the head it was planned on (re-planned, only
        what changed, when the head moved: ``merge_turn``), so the comparison is made against
        the versions present at commit time."""
        assert self._merge is not None
        with merge_turn(planner, self._table.refresh):
            ensure_no_library_retry(self._table)
            check_offsets(token, self.loaded_offsets())
            props = token.to_properties()
            try:
                # cached metadata: a plain transaction deep-copies it on every access
                with CachedTransaction(self._table) as txn:
                    txn.set_properties(live_offset_properties(token))
                    planner.stage(txn, self._table, props)
            except CommitFailedException:
                self._table.refresh()
                raise

    def _commit_at_head(self, files: list[DataFile], token: CommitToken) -> None:
        merge = property_as_bool(
            self._table.metadata.properties,
            TableProperties.MANIFEST_MERGE_ENABLED,
            TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT,
        )
        with self._table.transaction() as txn:
            txn.set_properties(live_offset_properties(token))
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
        schema = self._table.schema().as_arrow()
        if self._merge is not None:  # tombstones: the marker column, on a table that has it
            self._merge.check_table(schema, f"table={self._table.name()}")
            data = self._merge.mark(data)
        try:
            return common.conform(data, schema, sort_by=self._sort_by)
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

    def maintain_table(self) -> common.MaintenanceReport:
        """The live cadence (every ``policy.every_commits`` live commits): compact the small
        files the live side wrote (:mod:`backfill.sinks.iceberg.compact`), then expire."""
        from backfill.sinks.iceberg.compact import compact_table  # compact imports this module

        compaction = compact_table(self._table, self.policy)
        return common.MaintenanceReport(expired=self.maintain(), compaction=compaction)

    def maintain(self) -> int:
        """Expire all but the newest ``keep_versions`` snapshots older than ``min_age_s``.

        The live offsets live in table properties, so expiry never loses them. Returns the
        number of snapshots expired; a conflict with a concurrent writer skips this round.
        """
        crash_point("maintenance")
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
