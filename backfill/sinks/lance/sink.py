"""Lance writer (pylance). DESIGN §3-§4.

* Never a whole-table overwrite. ``overwrite`` replaces the scope with ONE ``Update``
  transaction: deletion vectors for the scope's rows (``LanceFragment.delete``) plus the new
  fragments, committed together, so a crash leaves either the old or the new scope.
* ``merge``: upsert by key under the declared order (``backfill.sinks.merge``): every row of
  the batch's keys is read (archive and live rows included), winners decided in Arrow, and
  ONE ``Update`` deletes the replaced keys (and the slice's own scope) and adds the winners
  (``backfill.sinks.lance.merge``). Merges are serialised per dataset with a file lock (local
  datasets); live batches merge the same way (:class:`LanceLive`).
* Tokens live in each version's ``transaction_properties``; lookups read only versions that
  still exist plus a token index beside the dataset (one document per slice commit, keyed by
  slice) that the maintenance (and a lookup meeting a long tail) folds forward before any
  version is removed (``backfill.sinks.lance.tokens``), so version cleanup never loses a
  backfill token and no commit rewrites the index.
* Conflicts (``lance.commit.CommitConflictError``) re-run the operation after backoff
  (``overwrite`` keeps its new fragment files and only recomputes the deletions).
* Live appends, live offsets and maintenance go through :class:`backfill.sinks.lance.live.LanceLive`
  (the one live code path: offset-conditional, atomic with the token, checkpointed offsets).
"""

from __future__ import annotations

import functools
import json
import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import lance
import pyarrow as pa
import pyarrow.compute as pc
from lance.commit import CommitConflictError as LanceConflict
from lance.dataset import Transaction
from lance.file import LanceFileReader
from lance.fragment import FragmentMetadata, write_fragments

from backfill.sinks import common, merge
from backfill.sinks.lance import merge as merge_lance
from backfill.sinks.lance import tokens
from backfill.sinks.lance.io import dataset_io
from backfill.sinks.lance.live import LanceLive, live_checkpoint
from backfill.sinks.scopes import arrow_scope, lance_scope, micros
from coordinator.core import lineage
from coordinator.core.errors import WriterError
from coordinator.core.ports import CommitRecord
from coordinator.core.values import CommitToken, Offset, PartitionId, Scope, SnapshotId, WriteMode

log = logging.getLogger(__name__)


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, LanceConflict) and exc.retryable


class LanceSink:
    """One Lance dataset; satisfies the ``SliceWriter``, ``LiveTable`` and ``TableReader``
    ports of :mod:`coordinator.core.ports` structurally."""

    def __init__(
        self,
        uri: str,
        schema: pa.Schema,
        event_time: str,
        *,
        mode: WriteMode = "overwrite",
        key: Sequence[str] = (),
        version: str | None = None,
        strict_keys: bool = False,
        delete_when: tuple[str, object] | None = None,
        policy: common.RetryPolicy = common.DEFAULT_RETRY,
        maintenance: common.MaintenancePolicy = common.DEFAULT_MAINTENANCE,
        storage_options: dict[str, str] | None = None,
        host_lock: bool = False,
    ) -> None:
        self.uri = uri
        self.storage_options = storage_options  # object-store keys: secrets, never logged
        self.io = dataset_io(uri, storage_options, host_lock)
        self.schema = lineage.with_lineage(schema, tombstones=delete_when is not None)
        self.event_time = event_time
        self.mode = mode
        self.key = tuple(key)
        self.rule = (
            merge.MergeRule(self.key, version, strict_keys, delete_when) if mode == "merge" else None
        )
        self.policy = policy
        self.live = LanceLive(
            uri, self.schema, policy=policy, maintenance=maintenance,
            storage_options=storage_options, host_lock=host_lock, merge_rule=self.rule,
        )  # fmt: skip
        self._txns = tokens.TransactionCache()
        # key/event-time bounds per fragment: merge slices scan only the fragments they meet
        self._bounds = (
            merge_lance.FragmentBounds(self.key[0], event_time)
            if self.rule is not None and len(self.key) == 1
            else None
        )

    # -- dataset -------------------------------------------------------------------------

    def ensure_table(self) -> None:
        """Create an empty dataset with the job's schema plus lineage if none exists."""
        if self._exists():
            if self.rule is not None:  # declared tombstones need the marker column
                self.rule.check_table(self._dataset().schema, f"uri={self.uri}")
            return
        try:
            lance.write_dataset(
                self.schema.empty_table(),
                self.uri,
                mode="create",
                **self.io,
            )
        except (OSError, ValueError) as exc:
            if not self._exists():
                raise WriterError(f"uri={self.uri}: cannot create the dataset ({exc})") from exc
            log.info("dataset created concurrently: %s", self.uri)

    def ensure_live(self) -> None:
        """The dataset, created if missing (live appends need nothing more on Lance)."""
        self.ensure_table()

    def _exists(self) -> bool:
        try:
            lance.dataset(self.uri, **self.io)
        except (OSError, ValueError):
            return False
        return True

    def _dataset(self) -> lance.LanceDataset:
        return lance.dataset(self.uri, **self.io)

    def _rows(self, data: pa.Table) -> pa.Table:
        if self.rule is not None:  # tombstones: the marker column (conform checks the table's)
            data = self.rule.mark(data)
        try:
            return common.conform(data, self.schema, sort_by=self.event_time)
        except (ValueError, TypeError, pa.ArrowInvalid) as exc:
            raise WriterError(
                f"uri={self.uri}: rows do not fit the dataset schema ({exc})",
                hint="check the transform returns the job's schema",
            ) from None

    # -- commits -------------------------------------------------------------------------

    def _commit(
        self,
        what: str,
        token: CommitToken,
        action: Callable[[], lance.LanceDataset],
        policy: common.RetryPolicy | None = None,
    ) -> CommitRecord:
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
        if token.side == "backfill":
            self._after_slice_commit(done)
        return CommitRecord(token, SnapshotId(done.version), datetime.now(UTC))

    def _after_slice_commit(self, ds: lance.LanceDataset) -> None:
        """The backfill's cadence (stateless: each slice may run in its own process): once
        ``every_commits`` versions landed since the last checkpoint (``maintain``), compact
        the small fragments and checkpoint + remove old versions, so the fragment count, the
        token tail and the versions kept stay bounded and the per-slice cost flat (DESIGN §6).
        ``ds`` is the committed version (its manifest is already read)."""
        every = self.live.maintenance.every_commits
        if not every or ds.version - live_checkpoint(ds.config()) <= every:
            return
        try:
            report = self.maintain_table()
        except Exception as exc:  # the slice landed; a later slice's commit tries again
            log.warning("uri=%s maintenance after a slice failed: %s", self.uri, exc)
            return
        log.info("uri=%s maintenance during the backfill: %s", self.uri, report.as_dict())

    def write_slice(self, scope: Scope, data: pa.Table, token: CommitToken) -> CommitRecord:
        """Replace (overwrite), upsert (merge) or add to (append) exactly ``scope`` in one
        version."""
        what = f"uri={self.uri} slice_id={token.slice_id} attempt={token.attempt}"
        rows = self._rows(data)
        props = token.to_properties()
        predicate = self._predicate(scope)
        if self.rule is not None:
            batch = merge.dedupe(rows, self.rule)
            own = (predicate, arrow_scope(scope, self.event_time))
            window = (
                (micros(scope.bucket.start), micros(scope.bucket.end))
                if scope.bucket is not None
                else None  # a Kafka scope: its rows may be in any fragment
            )
            with common.dataset_lock(self.uri, "merge"):
                return self._commit(what, token, lambda: self._merge(batch, own, props, window))
        new = (
            write_fragments(
                rows, self.uri, schema=self.schema, storage_options=self.storage_options
            )
            if rows.num_rows
            else []
        )
        if self.mode == "append" and new:  # an empty slice commits its token like overwrite
            return self._commit(what, token, lambda: self._append(new, props))
        seen: dict[int, tuple[Any, Any]] = {}
        flt = arrow_scope(scope, self.event_time)
        return self._commit(what, token, lambda: self._replace(new, (predicate, flt), props, seen))

    # -- write-audit-publish ([backfill] publish = "atomic") ---------------------------------

    def stage_slice(self, scope: Scope, data: pa.Table, token: CommitToken) -> dict[str, Any]:
        """Write the slice's fragments (data files under the dataset) WITHOUT committing
        them; returns their metadata as plain JSON for the state store. No version is made,
        so readers see nothing of them."""
        rows = self._rows(data)
        new = (
            write_fragments(
                rows, self.uri, schema=self.schema, storage_options=self.storage_options
            )
            if rows.num_rows
            else []
        )
        return {"fragments": [f.to_json() for f in new], "rows": rows.num_rows}

    def staged_rows(self, staged: Sequence[dict[str, Any]]) -> pa.Table:
        """The rows of staged (uncommitted) fragments, in the dataset schema (a fresh fragment
        holds one data file with every column)."""
        parts = [self.schema.empty_table()]
        for doc in staged:
            for frag in doc["fragments"]:
                for f in frag["files"]:
                    reader = LanceFileReader(
                        f"{self.uri}/data/{f['path']}", storage_options=self.storage_options
                    )
                    table = reader.read_all().to_table()
                    parts.append(table.select(self.schema.names).cast(self.schema))
        return pa.concat_tables(parts)

    def publish(
        self, scopes: Sequence[Scope], staged: Sequence[dict[str, Any]], token: CommitToken
    ) -> CommitRecord:
        """ONE version making every staged fragment visible. Overwrite mode: one ``Update``
        (deletion vectors for the rows of every slice's scope plus the new fragments), the
        same transaction kind as a slice overwrite, so a concurrent live ``Append`` survives
        (a conflict re-evaluates the deletions on the newest version and retries). Append
        mode: one ``Append``. Callers look ``token`` up first: publish once."""
        what = f"uri={self.uri} publish slice_id={token.slice_id}"
        props = token.to_properties()
        new = [
            FragmentMetadata.from_json(json.dumps(f)) for d in staged for f in d["fragments"]
        ]
        policy = common.PUBLISH_RETRY
        if self.mode == "append" or not scopes:
            return self._commit(what, token, lambda: self._append(new, props), policy)
        predicate = " OR ".join(f"({self._predicate(s)})" for s in scopes)
        flt = functools.reduce(operator.or_, (arrow_scope(s, self.event_time) for s in scopes))
        seen: dict[int, tuple[Any, Any]] = {}
        replace = lambda: self._replace(new, (predicate, flt), props, seen)  # noqa: E731
        return self._commit(what, token, replace, policy)

    def _predicate(self, scope: Scope) -> str:
        """The scope as Lance SQL (quoted identifiers, literals of the event-time type)."""
        try:
            column_type = self.schema.field(self.event_time).type
            return lance_scope(scope, self.event_time, column_type)
        except (KeyError, ValueError) as exc:
            raise WriterError(
                f"uri={self.uri} event_time={self.event_time!r}: cannot build the slice's "
                f"delete scope ({exc})",
                hint="declare event_time as a timestamp column of [schema.fields]",
            ) from None

    def _replace(
        self,
        new: list[Any],
        scope: tuple[str, pc.Expression],
        props: dict[str, str],
        seen: dict[int, tuple[Any, Any]],
    ) -> lance.LanceDataset:
        """Delete the scope (``scope``: the same predicate as Lance SQL and as an Arrow
        expression) at the newest version and add ``new`` in one ``Update`` version.

        One scan of the scope's columns finds the fragments holding a row of it; only those
        evaluate the deletion, so the cost follows the scope, not the dataset's fragment
        count. ``new`` is written once and ``seen`` keeps each fragment's deletion result by
        its metadata, so a retry after a concurrent (live) commit only evaluates the
        fragments that are new or changed: the retry window stays small under a fast live
        appender.
        """
        with common.dataset_lock(self.uri, "commit"):
            return self._replace_locked(new, scope, props, seen)

    def _replace_locked(
        self,
        new: list[Any],
        scope: tuple[str, pc.Expression],
        props: dict[str, str],
        seen: dict[int, tuple[Any, Any]],
    ) -> lance.LanceDataset:
        predicate, flt = scope
        ds = self._dataset()
        holding = merge_lance.fragments_holding(ds, flt)
        removed: list[int] = []
        updated: list[Any] = []
        for frag in ds.get_fragments():
            if frag.fragment_id not in holding:  # no row of the scope: unchanged
                continue
            before = frag.metadata
            hit = seen.get(frag.fragment_id)
            if hit is None or hit[0] != before:
                hit = (before, frag.delete(predicate))
                seen[frag.fragment_id] = hit
            meta = hit[1]
            if meta is None:
                removed.append(frag.fragment_id)
            elif meta != before:
                updated.append(meta)
        op = lance.LanceOperation.Update(
            removed_fragment_ids=removed, updated_fragments=updated, new_fragments=new
        )
        txn = Transaction(read_version=ds.version, operation=op, transaction_properties=props)
        common.crash_point("worker.before_commit")  # files written, not committed
        return lance.LanceDataset.commit(
            self.uri,
            txn,
            read_version=ds.version,
            max_retries=0,
            **self.io,
        )

    def _append(self, new: list[Any], props: dict[str, str]) -> lance.LanceDataset:
        """Add ``new`` in one ``Append`` version carrying the token (append mode)."""
        ds = self._dataset()
        op = lance.LanceOperation.Append(new)
        txn = Transaction(read_version=ds.version, operation=op, transaction_properties=props)
        common.crash_point("worker.before_commit")  # files written, not committed
        return lance.LanceDataset.commit(
            self.uri,
            txn,
            read_version=ds.version,
            max_retries=0,
            **self.io,
        )

    def _merge(
        self,
        rows: pa.Table,
        scope: tuple[str, Any],
        props: dict[str, str],
        window: tuple[int, int] | None,
    ) -> lance.LanceDataset:
        with common.dataset_lock(self.uri, "commit"):
            return self._merge_locked(rows, scope, props, window)

    def _merge_locked(
        self,
        rows: pa.Table,
        scope: tuple[str, Any],
        props: dict[str, str],
        window: tuple[int, int] | None,
    ) -> lance.LanceDataset:
        """Upsert by key under the declared order (``backfill.sinks.lance.merge``): deletions
        of the replaced keys and of the slice's own scope plus the winners, in one version."""
        assert self.rule is not None
        ds = self._dataset()
        try:
            prune = (self._bounds, window) if self._bounds is not None else None
            ch = merge_lance.plan_changes(ds, self.uri, self.schema, rows, self.rule, scope,
                                          storage_options=self.storage_options,
                                          prune=prune)  # fmt: skip
        except (ValueError, pa.ArrowInvalid) as exc:
            raise WriterError(f"uri={self.uri}: merge refused ({exc})") from exc
        op = lance.LanceOperation.Update(
            removed_fragment_ids=ch.removed, updated_fragments=ch.updated, new_fragments=ch.new
        )
        txn = Transaction(read_version=ds.version, operation=op, transaction_properties=props)
        common.crash_point("worker.before_commit")  # files written, not committed
        return lance.LanceDataset.commit(
            self.uri,
            txn,
            read_version=ds.version,
            max_retries=0,
            **self.io,
        )

    def append_live(self, data: pa.Table, token: CommitToken) -> CommitRecord:
        """Append a live micro-batch with its token and offsets in one version, conditional on
        the dataset's live offsets (see :meth:`LanceLive.append_live`)."""
        return self.live.append_live(self._rows(data), token)

    def maintain(self) -> int:
        """Checkpoint the live offsets, then remove old versions; returns how many."""
        return self.live.maintain()

    def compact(self) -> common.Compaction:
        """Merge small fragments (Lance ``compact_files``: a Rewrite, compatible with a
        concurrent live Append; a conflict with a delete skips this round)."""
        return self.live.compact()

    def maintain_table(self) -> common.MaintenanceReport:
        """Compact small fragments, then checkpoint and remove old versions."""
        compaction = self.compact()
        return common.MaintenanceReport(expired=self.maintain(), compaction=compaction)

    # -- reading -------------------------------------------------------------------------

    def _find(
        self, job_id: str, slice_id: str, match: Callable[[CommitToken], bool]
    ) -> CommitRecord | None:
        """The newest commit of ``job_id``/``slice_id`` whose token ``match``es; a version
        removed by a concurrent cleanup while reading (it was folded into the index first)
        re-opens once."""
        try:
            return self._find_at(self._dataset(), job_id, slice_id, match)
        except OSError as exc:
            log.info("versions removed while looking a token up, re-reading: %s", exc)
            return self._find_at(self._dataset(), job_id, slice_id, match)

    def _find_at(
        self,
        ds: lance.LanceDataset,
        job_id: str,
        slice_id: str,
        match: Callable[[CommitToken], bool],
    ) -> CommitRecord | None:
        config = ds.config()
        for version, token in tokens.tail(ds, self._txns, tokens.checkpoint(config)):
            if token.job_id == job_id and token.slice_id == slice_id and match(token):
                return CommitRecord(token, SnapshotId(version), tokens.committed_at(ds, version))
        if ds.version - tokens.checkpoint(config) > tokens.FOLD_AFTER:
            self._fold(ds)
        found = self.live.index.get(job_id, slice_id, match)
        if found is not None:
            return found
        return next(
            (
                r
                for r in tokens.legacy(config)
                if r.token.job_id == job_id and r.token.slice_id == slice_id and match(r.token)
            ),
            None,
        )

    def _fold(self, ds: lance.LanceDataset) -> None:
        """Move the token index up to ``ds.version`` (its documents, then one
        ``UpdateConfig`` moving the checkpoint; skipped on a conflict with a concurrent fold
        or maintenance, which moves it too)."""
        try:
            updates = tokens.fold(ds, self._txns, self.live.index)
            op = lance.LanceOperation.UpdateConfig(
                config_updates=lance.LanceOperation.UpdateMap(updates, replace=False)
            )
            txn = Transaction(read_version=ds.version, operation=op)
            lance.LanceDataset.commit(
                self.uri,
                txn,
                read_version=ds.version,
                max_retries=0,
                **self.io,
            )
        except LanceConflict as exc:
            log.info("token index fold skipped this round: %s", exc)
        except Exception as exc:  # only an optimisation: the lookup itself already succeeded
            log.warning("token index fold failed, lookups stay correct: %s", exc)

    def commits(self) -> list[CommitRecord]:
        """Seamline commits, newest first: every one in the versions above the token index's
        checkpoint, then the newest backfill commit of each slice held in the index."""
        ds = self._dataset()
        config = ds.config()
        recent = [
            CommitRecord(token, SnapshotId(version), tokens.committed_at(ds, version))
            for version, token in tokens.tail(ds, self._txns, tokens.checkpoint(config))
        ]
        folded: dict[tuple[str, str], CommitRecord] = {}
        for r in self.live.index.newest() + tokens.legacy(config):  # newest first in each
            key = (r.token.job_id, r.token.slice_id)
            if key not in folded or r.snapshot_id > folded[key].snapshot_id:
                folded[key] = r
        return recent + sorted(folded.values(), key=lambda r: r.snapshot_id, reverse=True)

    def live_offsets(self) -> dict[PartitionId, Offset]:
        """Next offset per partition: the config checkpoint plus later live versions."""
        return self.live.live_offsets()

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None:
        """The newest version carrying this slice's token (see ``backfill.sinks.lance.tokens``:
        only existing versions are read, older ones come from the token index)."""
        return self._find(job_id, slice_id, lambda _: True)

    def _find_exact(self, token: CommitToken) -> CommitRecord | None:
        return self._find(token.job_id, token.slice_id, lambda t: t == token)

    def scan(self, scope: Scope | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows of the dataset, optionally limited to ``scope`` and ``columns``."""
        expr = arrow_scope(scope, self.event_time) if scope is not None else None
        return self._dataset().to_table(columns=columns, filter=expr)

    def scan_batches(self) -> Iterator[pa.RecordBatch]:
        """Every row of the dataset, batch by batch (the reconciler's one-pass scan)."""
        yield from self._dataset().to_batches()
