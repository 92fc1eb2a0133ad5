"""Live appends to a Lance dataset, conditional on the dataset's live offsets (DESIGN §3).

The one implementation of the live side's table code for Lance (``LanceSink`` delegates).

**Conditional and atomic.** A live batch is committed as ONE Lance transaction whose
``transaction_properties`` hold the token and the batch's end offsets, so data and offsets land
together. Lance lets two concurrent ``Append`` transactions both commit (they are compatible),
so an append cannot be made conditional. The live commit is therefore a ``Merge`` operation
listing the read version's fragments plus the new ones with the unchanged schema: Lance treats
a ``Merge`` as incompatible with any concurrent data change (Append, Update, Delete, Merge,
Rewrite), so committing it with ``read_version=V`` succeeds only if no data commit landed
after ``V``. The offsets are checked at ``V``; a conflict re-reads the newest version and
re-checks (the fragment files are kept and re-used): if a partition moved, the batch was
written by someone else and :class:`CommitConflictError` is raised, never a second copy.
``UpdateConfig`` (the checkpoint below) stays compatible, so maintenance never blocks it.

**Offsets without scanning every version.** The newest live offsets are the per-partition
maximum over a *checkpoint* kept in the dataset config (manifest-level keys
``seamline.live.offset.<p>`` plus ``seamline.live.checkpoint-version`` = ``C``) and the live
transactions of the versions ``> C`` that exist (listed, never guessed by number).
:func:`maintain` writes the checkpoint computed at the version ``V`` it read, and in the same
commit folds the commit-token index (``backfill.sinks.lance.tokens``) up to ``V`` (an
``UpdateConfig`` with ``read_version=V``: two maintainers conflict on the same keys, so the
checkpoint only moves forward), then removes only versions ``<= V`` that are older than the
minimum age and not among the newest kept. Live commits after ``V`` are in
versions ``> V`` and still scanned, so cleanup never loses an offset. Between checkpoints
:func:`live_offsets` reads ``O(commits since the last maintenance)`` transaction files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import lance
import pyarrow as pa
from lance.commit import CommitConflictError as LanceConflict
from lance.dataset import Transaction
from lance.fragment import write_fragments

from backfill.sinks import common, merge
from backfill.sinks.lance import merge as merge_lance
from backfill.sinks.lance import tokens
from backfill.sinks.lance.io import dataset_io
from coordinator.core.errors import CommitConflictError, CommitOutcomeUnknownError, WriterError
from coordinator.core.faults import crash_point
from coordinator.core.ports import CommitRecord
from coordinator.core.values import TOKEN_PREFIX, CommitToken, Offset, PartitionId, SnapshotId

log = logging.getLogger(__name__)

CHECKPOINT_KEY = f"{TOKEN_PREFIX}live.checkpoint-version"


@dataclass(frozen=True)
class LiveState:
    """Live offsets as of one dataset version."""

    version: int
    offsets: dict[PartitionId, Offset]


def live_checkpoint(config: Mapping[str, str]) -> int:
    """The version of the last live checkpoint (``maintain``) in a dataset config (0: none)."""
    return int(config.get(CHECKPOINT_KEY, "0"))


def _checkpoint(ds: lance.LanceDataset) -> LiveState:
    config = ds.config()
    return LiveState(live_checkpoint(config), common.parse_live_offsets(config))


def live_state(
    ds: lance.LanceDataset,
    known: LiveState | None = None,
    cache: tokens.TransactionCache | None = None,
) -> LiveState:
    """Live offsets at ``ds.version``: the config checkpoint (and ``known``, an earlier
    state of the same dataset) plus the live transactions of the versions after them."""
    base = _checkpoint(ds)
    offsets = dict(base.offsets)
    since = base.version
    if known is not None and known.version <= ds.version:
        offsets = common.merge_offsets(offsets, known.offsets)
        since = max(since, known.version)
    txns = cache if cache is not None else tokens.TransactionCache()
    for _, props in tokens.transactions(ds, txns, since):  # never a removed version
        offsets = common.merge_offsets(offsets, common.parse_live_offsets(props))
    return LiveState(ds.version, offsets)


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, LanceConflict) and exc.retryable


class LanceLive:
    """Offset-conditional live appends, live offsets and maintenance of one dataset."""

    def __init__(
        self,
        uri: str,
        schema: pa.Schema,
        *,
        policy: common.RetryPolicy = common.DEFAULT_RETRY,
        maintenance: common.MaintenancePolicy = common.DEFAULT_MAINTENANCE,
        storage_options: dict[str, str] | None = None,
        host_lock: bool = False,
        merge_rule: merge.MergeRule | None = None,
    ) -> None:
        self.uri = uri
        self.storage_options = storage_options  # object-store keys: secrets, never logged
        self.io = dataset_io(uri, storage_options, host_lock)
        self.merge_rule = merge_rule
        self.schema = schema
        self.policy = policy
        self.maintenance = maintenance
        self._known: LiveState | None = None
        self._commits = 0
        self._txns = tokens.TransactionCache()
        self.index = tokens.TokenIndex(uri, storage_options)

    def _open(self) -> tuple[lance.LanceDataset, LiveState]:
        """The newest version and its live state. A concurrent maintenance may remove
        versions below its newer checkpoint while we read: then re-open once."""
        ds = lance.dataset(self.uri, **self.io)
        try:
            state = live_state(ds, self._known, self._txns)
        except OSError as exc:
            log.info("versions removed while reading live offsets, re-reading: %s", exc)
            ds = lance.dataset(self.uri, **self.io)
            state = live_state(ds, self._known, self._txns)
        self._known = state
        return ds, state

    def live_offsets(self) -> dict[PartitionId, Offset]:
        """Next offset per partition at the newest version."""
        return dict(self._open()[1].offsets)

    def append_live(self, rows: pa.Table, token: CommitToken) -> CommitRecord:
        """Append ``rows`` (already conformed) if every range of ``token`` starts at the
        dataset's live offset of its partition. Raises ``CommitConflictError`` (not applied),
        ``CommitOutcomeUnknownError`` (token not found after an ambiguous error)."""
        if token.side != "live" or not token.ranges:
            raise WriterError(
                f"slice_id={token.slice_id}: expected a live token with ranges, found "
                f"side={token.side} ranges={len(token.ranges)}"
            )
        what = f"uri={self.uri} live slice_id={token.slice_id}"
        props = {**token.to_properties(), **common.live_offset_properties(token)}
        rule = self.merge_rule
        batch = merge.dedupe(rows, rule) if rule is not None else rows
        new = [] if rule is not None or not rows.num_rows else self._write(rows)
        read: list[int] = []

        def attempt() -> lance.LanceDataset:
            with common.dataset_lock(self.uri, "commit"):  # fair turns with the backfill
                ds, state = self._open()
                read.append(ds.version)
                if rule is not None:
                    return self._merge_at(ds, state, batch, token, props)
                return self._commit_at(ds, state, new, token, props)

        try:
            done = common.retry_conflicts(what, attempt, _is_retryable, self.policy)
        except WriterError:
            raise
        except Exception as exc:
            done = self._resolve_unknown(what, token, min(read, default=0), exc)
        self._after_commit()
        return CommitRecord(token, SnapshotId(done.version), datetime.now(UTC), rows.num_rows)

    def _write(self, rows: pa.Table) -> list[Any]:
        return list(write_fragments(
            rows, self.uri, schema=self.schema, storage_options=self.storage_options
        ))

    def _merge_at(
        self,
        ds: lance.LanceDataset,
        state: LiveState,
        batch: pa.Table,
        token: CommitToken,
        props: dict[str, str],
    ) -> lance.LanceDataset:
        """Merge mode: the same offset check, then one ``Merge`` listing every surviving
        fragment (deletions of the replaced keys applied) plus the winners' fragments, so
        the live commit stays conditional on no data commit since ``ds.version``."""
        assert self.merge_rule is not None
        self._check_offsets(state, token)
        ch = merge_lance.plan_changes(ds, self.uri, self.schema, batch, self.merge_rule,
                                      storage_options=self.storage_options)  # fmt: skip
        op = lance.LanceOperation.Merge(ch.kept + ch.new, ds.lance_schema)
        txn = Transaction(read_version=ds.version, operation=op, transaction_properties=props)
        return lance.LanceDataset.commit(
            self.uri, txn, read_version=ds.version, max_retries=0, **self.io
        )

    def _check_offsets(self, state: LiveState, token: CommitToken) -> None:
        moved = common.moved_partitions(token, state.offsets)
        if moved:
            shown = ", ".join(f"partition={p} expected={s} found={f}" for p, s, f in moved)
            raise CommitConflictError(
                f"uri={self.uri} slice_id={token.slice_id}: live offsets moved ({shown}); "
                "another live consumer committed this range",
                hint="re-read the table's live offsets and re-seek",
            )

    def _commit_at(
        self,
        ds: lance.LanceDataset,
        state: LiveState,
        new: list[Any],
        token: CommitToken,
        props: dict[str, str],
    ) -> lance.LanceDataset:
        self._check_offsets(state, token)
        fragments = [f.metadata for f in ds.get_fragments()] + new
        op = lance.LanceOperation.Merge(fragments, ds.lance_schema)
        txn = Transaction(read_version=ds.version, operation=op, transaction_properties=props)
        return lance.LanceDataset.commit(
            self.uri,
            txn,
            read_version=ds.version,
            max_retries=0,
            **self.io,
        )

    def _resolve_unknown(
        self, what: str, token: CommitToken, since: int, exc: Exception
    ) -> lance.LanceDataset:
        try:
            ds = lance.dataset(self.uri, **self.io)
            for version, props in tokens.transactions(ds, self._txns, since):
                if CommitToken.from_properties(props) == token:
                    log.warning("live commit reported %s but the token landed: %s", exc, what)
                    return lance.dataset(
                        self.uri, version=version, **self.io
                    )
        except Exception as lookup:  # still unreachable: the outcome stays unknown
            log.warning("token lookup failed: %s", lookup)
        raise CommitOutcomeUnknownError(
            f"{what}: live commit outcome unknown ({type(exc).__name__}: {exc})",
            hint="look the token up with find_commit before retrying; never delete files",
        ) from exc

    def _after_commit(self) -> None:
        self._commits += 1
        every = self.maintenance.every_commits
        if every and self._commits % every == 0:
            try:
                self.compact()
                self.maintain()
            except Exception as exc:  # the commit landed; maintenance retries next round
                log.warning("dataset maintenance failed after a live commit: %s", exc)

    def maintain(self) -> int:
        """Checkpoint the live offsets and fold the commit-token index
        (``backfill.sinks.lance.tokens``) into the dataset config in one commit, then remove
        old versions at or below that checkpoint; returns how many versions were removed (0 on
        a conflict). A removed version's backfill token is in the index first, so a running
        backfill's lookups never need it."""
        crash_point("maintenance")
        started = time.time()
        ds, state = self._open()
        config: dict[str, str | None] = {
            f"{common.LIVE_OFFSET_PREFIX}{p}": str(o) for p, o in state.offsets.items()
        }
        config[CHECKPOINT_KEY] = str(state.version)
        config.update(tokens.fold(ds, self._txns, self.index))  # the token index, same version
        op = lance.LanceOperation.UpdateConfig(
            config_updates=lance.LanceOperation.UpdateMap(config, replace=False)
        )
        txn = Transaction(read_version=ds.version, operation=op)
        try:
            latest = lance.LanceDataset.commit(
                self.uri,
                txn,
                read_version=ds.version,
                max_retries=0,
                **self.io,
            )
        except LanceConflict as exc:
            log.info("live checkpoint skipped this round: %s", exc)
            return 0
        return self._cleanup(latest, state.version, started)

    def compact(self) -> common.Compaction:
        """``compact_files`` over the dataset; 0 counts when nothing was small enough or a
        concurrent delete conflicted (the next round retries)."""
        ds = lance.dataset(self.uri, **self.io)
        try:
            m = ds.optimize.compact_files()
        except (LanceConflict, OSError, RuntimeError, ValueError) as exc:
            log.info("compaction skipped this round: %s", exc)
            return common.Compaction(conflicts=1)
        if m.fragments_removed == 0:
            return common.Compaction()
        return common.Compaction(
            partitions=1,
            files_removed=m.fragments_removed,
            files_added=m.fragments_added,
        )

    def _cleanup(self, latest: lance.LanceDataset, checkpoint: int, started: float) -> int:
        """Remove the versions ``<= checkpoint`` beyond the newest kept that are older than
        the minimum age. Version numbers come from ``version_refs()`` (no manifest read);
        timestamps are read oldest first and the walk stops at the first version too young
        (versions commit in order), so a round reads the manifests of the versions it
        removes plus one, never every version the minimum age still keeps."""
        cutoff = started - self.maintenance.min_age_s
        upto = min(checkpoint, latest.version - self.maintenance.keep_versions)
        old: list[int] = []
        for version in sorted(int(r["version"]) for r in latest.version_refs()):
            if version > upto:
                break
            try:
                at = tokens.committed_at(latest, version).timestamp()
            except OSError:  # removed by a concurrent cleanup meanwhile
                continue
            if at >= cutoff:
                break
            old.append(version)
        if not old:
            return 0
        latest.cleanup_old_versions(versions=old, error_if_tagged_old_versions=False)
        log.debug("removed %d old versions (checkpoint=%d)", len(old), checkpoint)
        return len(old)
