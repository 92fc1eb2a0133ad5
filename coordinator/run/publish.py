"""Write-audit-publish (``[backfill] publish = "atomic"``): audit the staged slices, then
publish all of them in ONE table commit.

Each slice of an atomic job is *staged* by its worker (data files written under the table,
not committed) and recorded in the state store with its token (status ``staged``). Once every
slice is staged, :func:`publish_staged`:

1. looks the publish token up in the table (job, slice id ``publish.e<epoch>``): a coordinator
   killed after the publish commit finds it and only records it (publish once);
2. otherwise audits the staged history: the reconciler over the table as the publish will
   leave it (``backfill.sinks.staged.StagedView``: checksums and offset coverage against the
   source). A difference blocks the publish: nothing becomes visible (exit 1);
3. crash point ``run.before_publish``; then the one publish commit (epoch-checked like every
   slice commit), retried against concurrent live commits;
4. marks every staged slice committed at the publish snapshot, in one state transaction.

Assertions (``[[backfill.assert]]``) run per slice before staging, as in per-slice mode: a
failed assertion leaves its slice failed and the run never reaches the publish.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from backfill.sinks.common import commit_guard
from backfill.sinks.staged import StagingTable
from coordinator.core.faults import crash_point
from coordinator.core.values import CommitToken, Epoch
from coordinator.state.store import SliceRecord, StateStore

if TYPE_CHECKING:
    from reconcile.model import ReconcileReport

log = logging.getLogger(__name__)

PublishState = Literal["staged", "published"]
Audit = Callable[[Sequence[SliceRecord]], tuple["ReconcileReport | None", "str | None"]]


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish_staged` did.

    ``state`` is ``published`` once the publish commit is in the table. ``audit`` is the
    reconcile report of the staged history (``None`` when the publish was found already made
    and no audit ran, or when the audit could not run: ``error`` says why).
    """

    state: PublishState
    snapshot_id: int | None
    slices: int
    audit: ReconcileReport | None = None
    error: str | None = None
    already_published: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for the run's report."""
        return {
            "state": self.state,
            "snapshot_id": self.snapshot_id,
            "slices": self.slices,
            "already_published": self.already_published,
            "error": self.error,
        }


def publish_slice_id(epoch: int) -> str:
    """The slice id of the publish commit's token (one publish per job and epoch)."""
    return f"publish.e{epoch}"


def publish_token(job_id: str, epoch: Epoch) -> CommitToken:
    """The token the publish commit carries."""
    return CommitToken(job_id, publish_slice_id(epoch), 1, epoch, "backfill")


def publish_staged(
    job_id: str, epoch: Epoch, store: StateStore, table: StagingTable, audit: Audit
) -> PublishResult:
    """Audit and publish every staged slice of ``job_id``'s epoch (see the module doc)."""
    records = store.list_slices(job_id, epoch)
    staged = [r for r in records if r.status == "staged"]
    token = publish_token(job_id, epoch)
    found = table.find_commit(job_id, token.slice_id)
    report = None
    if found is None:
        report, error = audit(records)
        if report is None or not report.reconciled:
            why = error or "the staged history does not reconcile with the source"
            log.error("job=%s publish blocked: %s; nothing was made visible", job_id, why)
            return PublishResult("staged", None, len(staged), report, why)
        crash_point("run.before_publish")
        with commit_guard(lambda tok: store.epoch_held(tok.job_id, tok.epoch)):
            found = table.publish(
                [r.slice.scope for r in staged], [dict(r.staged or {}) for r in staged], token
            )
        log.info("job=%s published %d staged slices in one commit snapshot_id=%s",
                 job_id, len(staged), found.snapshot_id)  # fmt: skip
    else:
        log.info("job=%s publish commit already in the table (snapshot_id=%s)",
                 job_id, found.snapshot_id)  # fmt: skip
    snapshot = int(found.snapshot_id)
    if staged:
        store.mark_published(job_id, epoch, [r.slice_id for r in staged], snapshot)
    return PublishResult(
        "published", snapshot, len(staged), report, already_published=report is None
    )


def publish_state(records: Sequence[SliceRecord]) -> dict[str, Any] | None:
    """``publish = "atomic"``: ``staged`` (slices staged, nothing visible yet) or
    ``published`` (with the publish commit's snapshot id); ``None`` for per-slice publishing."""
    atomic = [r for r in records if r.staged is not None and "batch" not in r.staged]
    if not atomic:
        return None
    staged = [r for r in atomic if r.status == "staged"]
    if staged:
        return {"state": "staged", "staged": len(staged), "snapshot_id": None}
    return {"state": "published", "staged": 0, "snapshot_id": atomic[0].snapshot_id}


__all__ = ["PublishResult", "publish_slice_id", "publish_staged", "publish_state", "publish_token"]
