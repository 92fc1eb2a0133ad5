"""The document ``seamline status`` prints, built from aggregates and bounded reads.

At a million slices ``status`` must not load the plan: the counts and the pace come from one
aggregate query (:meth:`~coordinator.state.slices.SliceStore.slice_totals`), and the slices
listed are a bounded page, problems first (``show="summary"``), every failed slice
(``"failed"``) or every slice, paged (``"all"``).

While a coordinator holds the job's lease (``running``: its pid, host and start), a failed
slice that this run will retry is listed as ``retrying``, not ``failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import Any

from coordinator.core.values import SliceStatus
from coordinator.run.runner import RETRY_NOTE
from coordinator.run.summary import DEFAULT_ROWS, Show
from coordinator.state.lease import holder_alive
from coordinator.state.slices import StatusTotals
from coordinator.state.store import SliceRecord, StateStore

log = logging.getLogger(__name__)

#: Slice states that count as done for ``remaining`` and the estimate.
DONE: tuple[SliceStatus, ...] = ("staged", "committed", "reconciled")
#: Listing order of the summary: problems first.
_ORDER: tuple[SliceStatus, ...] = ("failed", "running", "pending", "staged", "committed",
                                   "reconciled")  # fmt: skip
_NOT_DONE: tuple[SliceStatus, ...] = ("pending", "running", "failed")


def _slice_json(r: SliceRecord, run_active: bool) -> dict[str, Any]:
    retrying = (run_active and r.status == "failed"
                and (r.last_error or "").startswith(RETRY_NOTE))  # fmt: skip
    return {
        "slice_id": r.slice_id,
        "status": "retrying" if retrying else r.status,
        "attempts": r.attempts,
        "rows": r.rows,
        "est_rows": r.slice.est_rows,
        "duration_s": r.duration_s,
        "last_error": r.last_error,
    }


def _listed(store: StateStore, job_id: str, epoch: int, show: Show, limit: int) -> Iterator[
    SliceRecord
]:
    if show == "all":
        yield from store.iter_slices(job_id, epoch)
    elif show == "failed":
        yield from store.iter_slices(job_id, epoch, statuses=("failed",))
    else:
        left = limit
        for status in _ORDER:
            if left <= 0:
                return
            page = list(islice(store.iter_slices(job_id, epoch, statuses=(status,),
                                                 page_size=left), left))  # fmt: skip
            left -= len(page)
            yield from page


def _publish(store: StateStore, job_id: str, epoch: int, counts: Mapping[str, int]) -> Any:
    """``publish = "atomic"`` state from the counts and one committed slice's token."""
    if counts.get("staged"):
        return {"state": "staged", "staged": counts["staged"], "snapshot_id": None}
    first = next(store.iter_slices(job_id, epoch, statuses=("committed", "reconciled"),
                                   page_size=1), None)  # fmt: skip
    if first is None or first.staged is None or "batch" in first.staged:
        return None  # per-slice publishing (a "batch": committed by the coordinator's batches)
    return {"state": "published", "staged": 0, "snapshot_id": first.snapshot_id}


def estimate_seconds(summary: Mapping[str, Mapping[str, Any]], concurrency: int) -> float | None:
    """Seconds left at the pace of the done slices (rows/s), from ``status``'s ``summary``
    (per-status totals); ``None`` without a pace.

    >>> done = {"slices": 2, "timed": 2, "timed_rows": 200, "timed_s": 4.0, "est_rows": 0}
    >>> estimate_seconds({"committed": done, "pending": {"slices": 3, "est_rows": 300}}, 2)
    3.0
    """
    left = [v for k, v in summary.items() if k not in DONE]
    n_left = sum(int(v["slices"]) for v in left)
    if not n_left:
        return 0.0
    done = [v for k, v in summary.items() if k in DONE]
    timed = sum(int(v.get("timed") or 0) for v in done)
    if not timed:
        return None
    seconds = sum(float(v.get("timed_s") or 0.0) for v in done)
    rows = sum(int(v.get("timed_rows") or 0) for v in done)
    conc = max(1, concurrency)
    if rows <= 0:
        return seconds / timed * n_left / conc
    return sum(int(v.get("est_rows") or 0) for v in left) / (rows / seconds) / conc


def slice_status(
    store: StateStore, job_id: str, epoch: int | None, show: Show = "summary",
    limit: int = DEFAULT_ROWS, *, atomic: bool = True,
) -> dict[str, Any]:
    """The slice part of ``status`` (``epoch`` ``None``: no cut yet, no slices): counts and
    totals per status, the slices listed (see the module doc), ``remaining`` (ids of slices
    not yet done: all of them with ``show="all"``, else the first ``limit`` in plan order;
    ``remaining_count`` is always exact) and the publish state (``atomic``: the job publishes
    with ``publish = "atomic"``; other jobs have none, their staged slices wait for the
    coordinator's next batch commit)."""
    totals: dict[str, StatusTotals] = {}
    slices: list[dict[str, Any]] = []
    remaining: list[str] = []
    publish = None
    lease = store.get_lease(job_id)
    active = lease if lease is not None and holder_alive(lease) else None
    if epoch is not None:
        totals = store.slice_totals(job_id, epoch)
        slices = [_slice_json(r, active is not None)
                  for r in _listed(store, job_id, epoch, show, limit)]  # fmt: skip
        todo = store.iter_slices(job_id, epoch, statuses=_NOT_DONE,
                                 page_size=limit if show != "all" else 5_000)  # fmt: skip
        ids = (r.slice_id for r in todo)
        remaining = list(ids if show == "all" else islice(ids, limit))
        if atomic:  # per-slice jobs stage only for the coordinator's batch commits
            publish = _publish(store, job_id, epoch, {k: v.slices for k, v in totals.items()})
    counts = {k: v.slices for k, v in totals.items()}
    total = sum(counts.values())
    return {
        "counts": counts,
        "summary": {k: v.to_json() for k, v in totals.items()},
        "slices_total": total,
        "slices_more": total - len(slices) if show == "summary" else 0,
        "remaining": remaining,
        "remaining_count": sum(v for k, v in counts.items() if k not in DONE),
        "publish": publish,
        "slices": slices,
        "running": None if active is None else {"pid": active.owner.pid,
                                               "host": active.owner.host,
                                               "since": active.acquired_at.isoformat()},
    }


__all__ = ["DONE", "estimate_seconds", "slice_status"]
