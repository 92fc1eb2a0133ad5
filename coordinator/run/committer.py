"""One committer per table (``[backfill] committer = "coordinator"``): workers stage, the
coordinator commits several slices per table commit.

With the default ``committer = "worker"`` every worker commits its own slice: one table commit
per slice, and two workers' commits conflict with each other and with the live writer. With
``committer = "coordinator"`` a worker reads, decodes, checks and *stages* its slice (data files
written under the table, not visible; recorded in the state store as ``staged`` with its token,
as write-audit-publish does), and :class:`BatchCommitter`, in the coordinator, commits staged
slices in batches:

* a batch is committed once it holds ``commit_batch_slices`` slices, once its oldest slice has
  waited ``commit_batch_seconds``, and at the end of the run; while it commits, the workers go
  on writing the next slices;
* ONE table commit per batch: it deletes the OR of the batch's slice scopes and adds every
  staged file, retried against concurrent live commits
  on a fresh head (the delete is re-evaluated, files are not rewritten) and epoch-checked like
  every slice commit. It carries the batch's token, slice id ``batch.e<epoch>.<digest>``, the
  digest naming the batch's slice ids;
* before the commit, the batch's id is recorded with each of its slices (``assign_batch``);
  after it, every slice of the batch is marked committed at the batch's snapshot in one state
  transaction. A coordinator killed between the two (crash point ``run.after_batch_commit``)
  is mended by :meth:`BatchCommitter.recover` when the next run starts: a recorded batch found
  in the table has its slices marked committed. A recorded batch NOT found (the coordinator
  died before its commit, or the commit's snapshot, with its token, has expired since) has its
  slices set back to ``failed``: they run again and write fresh files, an overwrite of their
  scopes that is exact either way; their old files are never committed a second time. Staged
  slices with no batch recorded were in no commit: they go into the next batch. No slice is
  committed twice: a batch commit is idempotent by its token, and a slice is in at most one
  batch that reached the table.

Overwrite mode only: a merge is decided against the table at its own commit; an append re-run
after its batch's token expired would find its own rows in its scope and be refused for good
(append never overwrites). ``publish = "atomic"`` already makes one commit. All three are
refused.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from backfill.sinks.common import commit_guard
from coordinator.core.faults import crash_point
from coordinator.core.ports import CommitRecord
from coordinator.core.values import CommitToken, Epoch, Scope, SliceStatus
from coordinator.state.store import SliceRecord

log = logging.getLogger(__name__)


class BatchTable(Protocol):
    """What the committer needs of the table (the Iceberg and Lance sinks have it)."""

    def publish(
        self, scopes: Sequence[Scope], staged: Sequence[dict[str, Any]], token: CommitToken
    ) -> CommitRecord: ...

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None: ...


class BatchLedger(Protocol):
    """What the committer needs of the state store."""

    def iter_slices(
        self,
        job_id: str,
        epoch: int | None = None,
        *,
        statuses: Sequence[SliceStatus] | None = None,
        page_size: int = ...,
    ) -> Iterator[SliceRecord]: ...

    def assign_batch(
        self, job_id: str, epoch: int, slice_ids: Sequence[str], batch_id: str
    ) -> None: ...

    def unstage(self, job_id: str, slice_id: str, epoch: int, reason: str) -> None: ...

    def mark_published(
        self, job_id: str, epoch: int, slice_ids: Sequence[str], snapshot_id: int
    ) -> None: ...

    def epoch_held(self, job_id: str, epoch: int) -> AbstractContextManager[None]: ...


def batch_slice_id(epoch: int, slice_ids: Iterable[str]) -> str:
    """The token slice id of the batch commit holding ``slice_ids``.

    >>> batch_slice_id(3, ["b", "a"]) == batch_slice_id(3, ["a", "b"])
    True
    >>> batch_slice_id(3, ["a"]).startswith("batch.e3.")
    True
    """
    digest = hashlib.sha256("\n".join(sorted(slice_ids)).encode()).hexdigest()[:20]
    return f"batch.e{epoch}.{digest}"


@dataclass(frozen=True)
class _Staged:
    slice_id: str
    scope: Scope
    staged: Mapping[str, Any]
    at: float


@dataclass
class BatchCommitter:
    """Commits the staged slices of one job epoch in batches (see the module docstring)."""

    job_id: str
    epoch: Epoch
    store: BatchLedger
    table: BatchTable
    max_slices: int = 16
    max_wait_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    commits: int = 0  # batch commits made by this committer
    committed_slices: int = 0
    _pending: list[_Staged] = field(default_factory=list)

    def recover(self) -> int:
        """Before a run: mark committed the staged slices whose recorded batch is in the
        table, set back to ``failed`` those whose recorded batch is not, and queue the staged
        slices of no batch for the next one. Returns how many slices were found committed."""
        batches: dict[str, list[SliceRecord]] = {}
        for r in self.store.iter_slices(self.job_id, self.epoch, statuses=("staged",)):
            batch = (r.staged or {}).get("batch")
            if batch is None:
                self._queue(r.slice_id, r.slice.scope, r.staged or {})
            else:
                batches.setdefault(str(batch), []).append(r)
        found = 0
        for batch, records in batches.items():
            commit = self.table.find_commit(self.job_id, batch)
            if commit is None:  # never committed, or its token expired: write them afresh
                for r in records:
                    self.store.unstage(self.job_id, r.slice_id, self.epoch,
                                       f"its batch {batch} is not in the table; the slice runs "
                                       "again")  # fmt: skip
                log.warning("job=%s batch %s not found in the table: its %d slices run again",
                            self.job_id, batch, len(records))  # fmt: skip
                continue
            ids = [r.slice_id for r in records]
            self.store.mark_published(self.job_id, self.epoch, ids, int(commit.snapshot_id))
            log.info("job=%s batch %s was committed before a restart (snapshot_id=%s): "
                     "%d slices recorded", self.job_id, batch, commit.snapshot_id,
                     len(ids))  # fmt: skip
            found += len(ids)
        return found

    def _queue(self, slice_id: str, scope: Scope, staged: Mapping[str, Any]) -> None:
        doc = {k: v for k, v in staged.items() if k != "batch"}
        self._pending.append(_Staged(slice_id, scope, doc, self.clock()))

    def add(self, slice_id: str, scope: Scope, staged: Mapping[str, Any]) -> None:
        """A slice the runner recorded as staged."""
        self._queue(slice_id, scope, staged)

    @property
    def pending(self) -> int:
        """Staged slices not yet committed."""
        return len(self._pending)

    def due(self) -> bool:
        """Whether a batch should be committed now."""
        if not self._pending:
            return False
        full = len(self._pending) >= self.max_slices
        return full or self.clock() - self._pending[0].at >= self.max_wait_s

    def commit_due(self) -> int:
        """Commit full or aged batches; returns the slices committed."""
        done = 0
        while self.due():
            done += self._commit(self._pending[: self.max_slices])
        return done

    def flush(self) -> int:
        """Commit every staged slice (the end of a run); returns the slices committed."""
        done = 0
        while self._pending:
            done += self._commit(self._pending[: self.max_slices])
        return done

    def _commit(self, batch: list[_Staged]) -> int:
        ids = [b.slice_id for b in batch]
        bid = batch_slice_id(self.epoch, ids)
        token = CommitToken(self.job_id, bid, 1, self.epoch, "backfill")
        self.store.assign_batch(self.job_id, self.epoch, ids, bid)
        found = self.table.find_commit(self.job_id, bid)
        if found is None:
            with commit_guard(lambda tok: self.store.epoch_held(tok.job_id, tok.epoch)):
                found = self.table.publish(
                    [b.scope for b in batch], [dict(b.staged) for b in batch], token
                )
        crash_point("run.after_batch_commit")
        self.store.mark_published(self.job_id, self.epoch, ids, int(found.snapshot_id))
        del self._pending[: len(batch)]
        self.commits += 1
        self.committed_slices += len(ids)
        log.info("job=%s committed %d slices in one commit (batch=%s snapshot_id=%s)",
                 self.job_id, len(ids), bid, found.snapshot_id)  # fmt: skip
        return len(ids)


__all__ = ["BatchCommitter", "BatchLedger", "BatchTable", "batch_slice_id"]
