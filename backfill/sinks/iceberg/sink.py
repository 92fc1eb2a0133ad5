"""Iceberg writer (pyiceberg, any catalog; seamline uses the SQL catalog). DESIGN §3-§4.

* ``overwrite``: one ``Table.overwrite`` whose filter is exactly the slice's scope (its own
  offsets, or archive tag AND bucket), so live rows in the same day survive.
* ``merge``: upsert by key under the declared order (``backfill.sinks.merge``): every table
  row of the batch's keys is read (whatever side or source wrote it), winners are decided in
  Arrow, and one commit deletes the replaced keys and adds the winners; re-planned on every
  attempt (``backfill.sinks.iceberg.merge``). Live micro-batches merge the same way
  (:class:`IcebergLiveTable`).
* Every commit carries the token in ``snapshot_properties``. Live appends, live offsets and
  maintenance go through :class:`backfill.sinks.iceberg.live.IcebergLiveTable` (the one live code
  path: offset-conditional commits, one table property ``seamline.live.offset.<p>`` per
  partition, snapshot expiry that keeps the offsets).
* Conflicts (``CommitFailedException``/``ValidationException``: certainly not applied) are
  retried with backoff after a reload; any other commit error is an unknown outcome: the
  token is looked up and, if absent, ``CommitOutcomeUnknownError`` is raised. Files are
  never deleted by seamline in that state.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform, HourTransform

from backfill.sinks import common, merge
from backfill.sinks.iceberg.internals import (
    CachedTransaction,
    data_file_from_json,
    data_file_to_json,
    stage_append,
    stage_overwrite,
    write_data_files,
)
from backfill.sinks.iceberg.live import (
    MAINTENANCE_PROPERTIES,
    IcebergLiveTable,
    committed_record,
    ensure_no_library_retry,
    snapshot_records,
)
from backfill.sinks.iceberg.merge import MergePlanner, merge_turn
from backfill.sinks.scopes import arrow_scope, ice_or, ice_true, iceberg_scope
from coordinator.core import lineage
from coordinator.core.errors import WriterError
from coordinator.core.ports import CommitRecord
from coordinator.core.values import CommitToken, Offset, PartitionId, Scope, WriteMode

log = logging.getLogger(__name__)

_NO_MATCH = "Delete operation did not match any records"


@contextlib.contextmanager
def _quiet_empty_delete() -> Iterator[None]:
    """pyiceberg warns when an overwrite's delete matches nothing: normal for a first load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_MATCH, category=UserWarning)
        yield


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, CommitFailedException | ValidationException)


class IcebergSink:
    """One Iceberg table; satisfies the ``SliceWriter``, ``LiveTable`` and ``TableReader``
    ports of :mod:`coordinator.core.ports` structurally."""

    def __init__(
        self,
        catalog: Catalog,
        identifier: str,
        schema: pa.Schema,
        event_time: str,
        *,
        partition_by: str = "day",
        mode: WriteMode = "overwrite",
        key: Sequence[str] = (),
        version: str | None = None,
        strict_keys: bool = False,
        delete_when: tuple[str, object] | None = None,
        policy: common.RetryPolicy = common.DEFAULT_RETRY,
        maintenance: common.MaintenancePolicy = common.DEFAULT_MAINTENANCE,
    ) -> None:
        self.catalog = catalog
        self.identifier = identifier
        self.schema = lineage.with_lineage(schema, tombstones=delete_when is not None)
        self.event_time = event_time
        self.partition_by = partition_by
        self.mode = mode
        self.key = tuple(key)
        self.rule = (
            merge.MergeRule(self.key, version, strict_keys, delete_when) if mode == "merge" else None
        )
        self.policy = policy
        self.maintenance = maintenance
        self._live: IcebergLiveTable | None = None

    # -- table ---------------------------------------------------------------------------

    def ensure_table(self) -> None:
        """Create the namespace and the partitioned table if they do not exist (race-safe)."""
        namespace = self.identifier.rsplit(".", 1)[0]
        try:
            self.catalog.create_namespace(namespace)
        except NamespaceAlreadyExistsError:
            pass
        except Exception:  # a racing creator won in a way the catalog reports otherwise
            if not self.catalog.namespace_exists(namespace):  # (SQL: a unique-key violation)
                raise
        if self.catalog.table_exists(self.identifier):
            return
        try:
            tx = self.catalog.create_table_transaction(
                self.identifier, schema=self.schema, properties=MAINTENANCE_PROPERTIES
            )
            transforms: dict[str, Any] = {"day": DayTransform(), "hour": HourTransform()}
            transform = transforms.get(self.partition_by)
            if transform is not None:
                with tx.update_spec() as spec:
                    spec.add_field(
                        self.event_time, transform, f"{self.event_time}_{self.partition_by}"
                    )
            tx.commit_transaction()
        except TableAlreadyExistsError:
            log.info("table created concurrently: %s", self.identifier)
        except CommitFailedException:  # the SQL catalog's word for the same race
            if not self.catalog.table_exists(self.identifier):
                raise
            log.info("table created concurrently: %s", self.identifier)

    def ensure_live(self) -> None:
        """The table (created if missing) with its manifest-merge and metadata-cleanup
        properties set: what live appends need."""
        self.ensure_table()
        self.live_table().ensure_maintenance_properties()

    def _table(self) -> Table:
        return self.catalog.load_table(self.identifier)

    def _rows(self, table: Table, data: pa.Table) -> pa.Table:
        schema = table.schema().as_arrow()
        if self.rule is not None:  # tombstones: the marker column, on a table that has it
            self.rule.check_table(schema, f"table={self.identifier}")
            data = self.rule.mark(data)
        try:
            return common.conform(data, schema, sort_by=self.event_time)
        except (ValueError, TypeError, pa.ArrowInvalid) as exc:
            raise WriterError(
                f"table={self.identifier}: rows do not fit the table schema ({exc})",
                hint="check the transform returns the job's schema",
            ) from None

    # -- commits -------------------------------------------------------------------------

    def _commit(
        self,
        what: str,
        token: CommitToken,
        action: Callable[[], Table],
        policy: common.RetryPolicy | None = None,
    ) -> CommitRecord:
        """Run one commit with conflict retries; resolve unknown outcomes by token."""
        done = common.commit_with_token(
            what,
            token,
            action,
            is_conflict=_is_conflict,
            policy=policy or self.policy,
            find_exact=self._find_exact,
        )
        if isinstance(done, CommitRecord):
            return done
        found = committed_record(done, token)
        if found is None:
            raise WriterError(f"{what}: expected the committed token in the table, found none")
        if token.side == "backfill":
            self._after_slice_commit(done)
        return found

    def write_slice(self, scope: Scope, data: pa.Table, token: CommitToken) -> CommitRecord:
        """Replace (overwrite), upsert (merge) or add to (append) exactly ``scope`` in one
        commit. Overwrite and append write their data files once; a conflict retry re-commits
        only metadata.
        """
        what = f"table={self.identifier} slice_id={token.slice_id} attempt={token.attempt}"
        if self.rule is not None:
            return self._merge_slice(what, scope, data, token)
        props = token.to_properties()
        target = iceberg_scope(scope, self.event_time)
        fresh: list[Table] = [self._table()]  # the first attempt commits on this load
        files = self._write_files(what, fresh[0], self._rows(fresh[0], data))

        def action() -> Table:
            table = fresh.pop() if fresh else self._table()
            if self.mode == "append":
                with CachedTransaction(table) as tx:
                    stage_append(tx, files, props)
                    common.crash_point("worker.before_commit")
                return table
            with _quiet_empty_delete(), CachedTransaction(table) as tx:
                stage_overwrite(tx, target, files, props)
                common.crash_point("worker.before_commit")  # files written, not committed
            return table

        return self._commit(what, token, action)

    def _merge_slice(
        self, what: str, scope: Scope, data: pa.Table, token: CommitToken
    ) -> CommitRecord:
        """Upsert by key under the declared order, planned afresh on every attempt against
        the snapshot it commits on (``backfill.sinks.iceberg.merge``)."""
        assert self.rule is not None
        rule, props = self.rule, token.to_properties()
        own = (iceberg_scope(scope, self.event_time), arrow_scope(scope, self.event_time))
        first = self._table()
        ensure_no_library_retry(first)  # a refused commit is re-planned, never rebased
        planner = MergePlanner(merge.dedupe(self._rows(first, data), rule), rule,
                               self.event_time, own)  # fmt: skip

        def action() -> Table:
            try:
                # read, decide and write on the head outside the lock (the live merger
                # commits meanwhile); under it, commit at once if the head did not move,
                # else plan again outside it (bounded rounds): fair turns with the live
                # merger on this host, each holding the lock for its commit only
                with (
                    merge_turn(planner, self._table) as table,
                    _quiet_empty_delete(),
                    CachedTransaction(table) as tx,
                ):
                    planner.stage(tx, table, props)
                    common.crash_point("worker.before_commit")  # files written
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise WriterError(f"{what}: merge refused ({exc})") from exc
            return table

        return self._commit(what, token, action)

    # -- write-audit-publish ([backfill] publish = "atomic") ---------------------------------

    def stage_slice(self, scope: Scope, data: pa.Table, token: CommitToken) -> dict[str, Any]:
        """Write the slice's Parquet data files under the table location WITHOUT committing
        them; returns what :meth:`publish` and :meth:`staged_rows` need (plain JSON, kept in
        the state store with the slice's token). Nothing becomes visible to readers."""
        what = f"table={self.identifier} slice_id={token.slice_id} attempt={token.attempt}"
        table = self._table()
        files = self._write_files(what, table, self._rows(table, data))
        return {"files": [data_file_to_json(f) for f in files], "rows": data.num_rows}

    def staged_rows(self, staged: Sequence[dict[str, Any]]) -> pa.Table:
        """The rows of staged (uncommitted) data files, in the table's Arrow schema."""
        table = self._table()
        schema = table.schema().as_arrow()
        parts = [schema.empty_table()]
        for doc in staged:
            for f in doc["files"]:
                with table.io.new_input(f["file_path"]).open() as fh:
                    parts.append(pq.read_table(fh).select(schema.names).cast(schema))
        return pa.concat_tables(parts)

    def publish(
        self, scopes: Sequence[Scope], staged: Sequence[dict[str, Any]], token: CommitToken
    ) -> CommitRecord:
        """ONE commit on ``main`` adding every staged file; in overwrite mode it also deletes
        every slice's scope (history owned by the backfill; live rows are outside every
        scope). Conflicts with live commits are retried on a fresh load of ``main`` (the
        delete is re-evaluated, the files are not rewritten); an unknown outcome is resolved
        by ``token``. Callers look ``token`` up first (:meth:`find_commit`): publish once."""
        what = f"table={self.identifier} publish slice_id={token.slice_id}"
        props = token.to_properties()
        exprs = [iceberg_scope(s, self.event_time) for s in scopes]
        meta = self._table().metadata
        files = [data_file_from_json(f, meta) for d in staged for f in d["files"]]

        def action() -> Table:
            # The host-local commit lock holds a local live writer off from the load to the
            # commit, so the publish is not overtaken on every attempt (no-op when remote).
            with common.location_lock(meta.location, "commit"):
                table = self._table()
                with _quiet_empty_delete(), CachedTransaction(table) as tx:
                    if self.mode == "append" or not exprs:
                        stage_append(tx, files, props)
                    else:
                        stage_overwrite(tx, ice_or(*exprs), files, props)
            return table

        return self._commit(what, token, action, common.PUBLISH_RETRY)

    def _write_files(self, what: str, table: Table, rows: pa.Table) -> list[DataFile]:
        try:
            return write_data_files(table, rows)
        except (ValueError, TypeError, pa.ArrowInvalid) as exc:
            raise WriterError(f"{what}: data files refused ({type(exc).__name__}: {exc})") from exc

    def live_table(self) -> IcebergLiveTable:
        """The shared live-append code over this table (loaded once, refreshed per call)."""
        if self._live is None:
            m = self.maintenance
            self._live = IcebergLiveTable(
                self._table(),
                keep_snapshots=m.keep_versions,
                expire_every=m.every_commits,
                min_snapshot_age_s=m.min_age_s,
                sort_by=self.event_time,
                merge_rule=self.rule,
            )
        return self._live

    def append_live(self, data: pa.Table, token: CommitToken) -> CommitRecord:
        """Append a live micro-batch, conditional on the table's live offsets (see
        :meth:`IcebergLiveTable.append_live`); raises ``CommitConflictError`` if another
        writer already moved a partition's offset."""
        return self.live_table().append_live(data, token)

    def maintain(self) -> int:
        """Expire old snapshots (the live offsets are kept); returns how many were expired."""
        return self.live_table().maintain()

    def compact(self) -> common.Compaction:
        """Rewrite each partition's small data files into one, conditional on the snapshot
        read (:mod:`backfill.sinks.iceberg.compact`); safe under a live appender."""
        from backfill.sinks.iceberg.compact import compact_table

        return compact_table(self.live_table().table, self.maintenance)

    def maintain_table(self) -> common.MaintenanceReport:
        """Compact small files, then expire old snapshots (manifests are merged by every
        commit: ``commit.manifest-merge.enabled``)."""
        compaction = self.compact()
        return common.MaintenanceReport(expired=self.maintain(), compaction=compaction)

    def _after_slice_commit(self, table: Table) -> None:
        """The backfill's cadence (stateless: each slice may run in its own process): once the
        table holds ``every_commits`` snapshots that expiry would remove (beyond the newest
        ``keep_versions``, older than ``min_age_s``), expire them, so per-slice commit cost
        stays flat (DESIGN §6, §8). Counted on the committed metadata in hand: while the
        minimum age keeps the snapshots, no slice pays a table refresh for nothing."""
        m = self.maintenance
        if not m.every_commits:
            return
        snaps = table.metadata.snapshots
        cutoff_ms = (time.time() - m.min_age_s) * 1000
        beyond = snaps[: max(0, len(snaps) - m.keep_versions)]
        if sum(1 for s in beyond if s.timestamp_ms < cutoff_ms) < m.every_commits:
            return
        try:
            expired = self.maintain()
        except Exception as exc:  # the slice landed; the next slice's commit tries again
            log.warning("table=%s snapshot expiry after a slice failed: %s", self.identifier, exc)
            return
        log.info("table=%s expired %d snapshots during the backfill", self.identifier, expired)

    # -- reading -------------------------------------------------------------------------

    def live_offsets(self) -> dict[PartitionId, Offset]:
        """Next offset per partition, from the table properties the live commits set."""
        return self.live_table().live_offsets()

    def commits(self) -> list[CommitRecord]:
        """Every seamline commit still in the table's snapshot history, newest first."""
        return list(snapshot_records(self._table()))

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None:
        """The newest snapshot carrying this slice's token."""
        return self.live_table().find_commit(job_id, slice_id)

    def _find_exact(self, token: CommitToken) -> CommitRecord | None:
        return next((r for r in snapshot_records(self._table()) if r.token == token), None)

    def scan(self, scope: Scope | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows of the table, optionally limited to ``scope`` and ``columns``."""
        expr = iceberg_scope(scope, self.event_time) if scope is not None else ice_true()
        fields = tuple(columns) if columns else ("*",)
        return self._table().scan(row_filter=expr, selected_fields=fields).to_arrow()

    def scan_batches(self) -> Iterator[pa.RecordBatch]:
        """Every row of the table, batch by batch (the reconciler's one-pass scan)."""
        yield from self._table().scan().to_arrow_batch_reader()
