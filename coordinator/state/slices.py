"""State store: the immutable plan and epoch-checked slice transitions.

Transitions (every one checks the caller's epoch in the same transaction)::

    pending|failed|running --mark_running--> running   (running again = resume after a crash)
    running               --mark_committed--> committed
    running               --mark_staged-----> staged      (publish = "atomic": files written,
                                                           not visible)
    staged                --mark_published--> committed   (every staged slice at once, after
                                                           the one publish commit)
    running               --mark_failed-----> failed
    committed|reconciled  --mark_reconciled-> reconciled
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from coordinator.core.errors import StateError
from coordinator.core.values import CommitToken, Epoch, Slice, SliceStatus, SnapshotId
from coordinator.state import schema as t
from coordinator.state.base import StoreBase, _now
from coordinator.state.codec import scope_from_json, scope_to_json, token_from_json

log = logging.getLogger(__name__)

_STATUSES: tuple[SliceStatus, ...] = (
    "pending",
    "running",
    "staged",
    "committed",
    "reconciled",
    "failed",
)
_MAX_ERROR = 4000
#: Rows per page of :meth:`SliceStore.iter_slices` (memory stays bounded by one page).
PAGE_SIZE = 5_000


@dataclass(frozen=True)
class StatusTotals:
    """Aggregates of the slices in one status (one GROUP BY row; no slice is loaded).

    ``timed`` counts the slices with a duration > 0 and a row count, ``timed_rows`` and
    ``timed_s`` are their rows and seconds (the pace ``seamline status`` estimates from).
    """

    slices: int
    rows: int
    est_rows: int
    timed: int
    timed_rows: int
    timed_s: float

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``status --output json``'s ``summary``)."""
        return {
            "slices": self.slices,
            "rows": self.rows,
            "est_rows": self.est_rows,
            "timed": self.timed,
            "timed_rows": self.timed_rows,
            "timed_s": self.timed_s,
        }


@dataclass(frozen=True)
class SliceRecord:
    """One planned slice and where it stands."""

    slice: Slice
    epoch: Epoch
    status: SliceStatus
    attempts: int
    rows: int | None = None
    quarantined: int | None = None
    checksum: Mapping[str, Any] | None = None
    token: CommitToken | None = None
    snapshot_id: SnapshotId | None = None
    staged: Mapping[str, Any] | None = None  # publish = "atomic": the slice's staged files
    last_error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    total_duration_s: float = 0.0

    @property
    def slice_id(self) -> str:
        """The slice's id."""
        return self.slice.slice_id


def _slice_key(job_id: str, epoch: int, slice_id: str) -> tuple[sa.ColumnElement[bool], ...]:
    """The WHERE clause naming one slice of one epoch."""
    return (
        t.slices.c.job_id == job_id,
        t.slices.c.epoch == epoch,
        t.slices.c.slice_id == slice_id,
    )


def _status(value: str) -> SliceStatus:
    for s in _STATUSES:
        if s == value:
            return s
    raise StateError(f"unknown slice status {value!r} in the state store")


def _record(row: Row[Any]) -> SliceRecord:
    token_doc = row.commit_token
    snapshot = token_doc.get("snapshot_id") if token_doc else None
    return SliceRecord(
        slice=Slice(
            slice_id=row.slice_id,
            scope=scope_from_json(row.scope),
            files=tuple(row.files),
            est_rows=row.est_rows,
            est_bytes=row.est_bytes,
        ),
        epoch=Epoch(row.epoch),
        status=_status(row.status),
        attempts=row.attempts,
        rows=row.rows,
        quarantined=row.quarantined,
        checksum=row.checksum,
        token=token_from_json(token_doc.get("properties") if token_doc else None),
        snapshot_id=None if snapshot is None else SnapshotId(int(snapshot)),
        staged=token_doc.get("staged") if token_doc else None,
        last_error=row.last_error,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_s=row.duration_s,
        total_duration_s=row.total_duration_s,
    )


class SliceStore(StoreBase):
    """Plan storage and slice transitions on top of :class:`StoreBase`."""

    def save_plan(self, job_id: str, epoch: int, slices: Sequence[Slice], plan_hash: str) -> None:
        """Store the plan of ``epoch`` once; the same plan again is a no-op.

        Raises :class:`StateError` if a different plan is stored for this cut (plans are
        immutable) or no cut is stored, :class:`StaleEpochError` for an old epoch.
        """
        with self._tx() as conn:
            self._check_epoch(conn, job_id, epoch)
            cut_row = conn.execute(
                sa.select(t.cuts.c.plan_hash).where(
                    t.cuts.c.job_id == job_id, t.cuts.c.epoch == epoch
                )
            ).one_or_none()
            if cut_row is None:
                raise StateError(f"job={job_id} epoch={epoch}: no cut stored; take the cut first")
            stored = cut_row.plan_hash
            if stored is not None:
                if stored != plan_hash:
                    raise StateError(
                        f"job={job_id} epoch={epoch}: expected plan_hash={stored}, "
                        f"found plan_hash={plan_hash} (the plan is immutable)",
                        hint="resume with the stored plan, or take a new cut with --new-cut",
                    )
                return
            self._insert_slices(conn, job_id, epoch, slices)
            conn.execute(
                t.cuts.update()
                .where(t.cuts.c.job_id == job_id, t.cuts.c.epoch == epoch)
                .values(plan_hash=plan_hash)
            )
        log.info("job=%s epoch=%d plan stored: %d slices", job_id, epoch, len(slices))

    def save_plan_inputs(self, job_id: str, epoch: int, fingerprint: str, plan_hash: str) -> None:
        """Record the fingerprint of the inputs the stored plan ``plan_hash`` was made from
        (the first one stays: the plan is immutable)."""
        key = (t.plan_inputs.c.job_id == job_id) & (t.plan_inputs.c.epoch == epoch)
        with self._tx() as conn:
            if conn.execute(sa.select(t.plan_inputs.c.epoch).where(key)).first() is None:
                conn.execute(t.plan_inputs.insert().values(
                    job_id=job_id, epoch=epoch, fingerprint=fingerprint, plan_hash=plan_hash))  # fmt: skip

    def plan_inputs(self, job_id: str, epoch: int) -> tuple[str, str] | None:
        """(fingerprint, plan hash) recorded for the plan of ``epoch``, or ``None``."""
        with self._tx() as conn:
            row = conn.execute(
                sa.select(t.plan_inputs.c.fingerprint, t.plan_inputs.c.plan_hash).where(
                    t.plan_inputs.c.job_id == job_id, t.plan_inputs.c.epoch == epoch
                )
            ).first()
        return None if row is None else (str(row[0]), str(row[1]))

    def _insert_slices(
        self, conn: Connection, job_id: str, epoch: int, slices: Sequence[Slice]
    ) -> None:
        if not slices:
            return
        conn.execute(
            t.slices.insert(),
            [
                {
                    "job_id": job_id,
                    "epoch": epoch,
                    "slice_id": s.slice_id,
                    "position": i,
                    "kind": s.scope.source,
                    "scope": scope_to_json(s.scope),
                    "files": list(s.files),
                    "est_rows": s.est_rows,
                    "est_bytes": s.est_bytes,
                    "status": "pending",
                    "attempts": 0,
                    "total_duration_s": 0.0,
                }
                for i, s in enumerate(slices)
            ],
        )

    def list_slices(self, job_id: str, epoch: int | None = None) -> list[SliceRecord]:
        """Every slice of the plan of ``epoch`` (default: current), in plan order, in memory
        at once: for small plans and tests; at scale use :meth:`iter_slices` (paged, filtered
        by status) or :meth:`slice_totals`."""
        with self._tx() as conn:
            if epoch is None:
                epoch = self._require_job(conn, job_id)
            rows = conn.execute(
                sa.select(t.slices)
                .where(t.slices.c.job_id == job_id, t.slices.c.epoch == epoch)
                .order_by(t.slices.c.position)
            ).all()
        return [_record(r) for r in rows]

    def iter_slices(
        self,
        job_id: str,
        epoch: int | None = None,
        *,
        statuses: Sequence[SliceStatus] | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[SliceRecord]:
        """The slices of ``epoch`` (default: current) in plan order, optionally only those in
        ``statuses``, read ``page_size`` at a time: keyset pages (each its own short
        transaction: memory is one page per status, and a writer is never held off by a long
        read) over the position index, or per status over the status index, merged in plan
        order (one ``IN`` query would have to sort every matching slice for each page).
        Slices that change status while the pages are read are seen in the state of the page
        that reads them."""
        if page_size < 1:
            raise ValueError(f"expected page_size >= 1, found {page_size}")
        if epoch is None:
            epoch = self.current_epoch(job_id)
        if statuses is None:
            rows = self._pages(job_id, epoch, None, page_size)
        else:
            streams = [self._pages(job_id, epoch, st, page_size)
                       for st in dict.fromkeys(statuses)]  # fmt: skip
            if not streams:
                return
            rows = streams[0] if len(streams) == 1 else heapq.merge(
                *streams, key=lambda r: int(r.position))  # fmt: skip
        yield from (_record(r) for r in rows)

    def _pages(
        self, job_id: str, epoch: int, status: str | None, page_size: int
    ) -> Iterator[Row[Any]]:
        """Rows of one plan (of one status) in plan order, one keyset page at a time."""
        where = [t.slices.c.job_id == job_id, t.slices.c.epoch == epoch]
        if status is not None:
            where.append(t.slices.c.status == status)
        after = -1
        while True:
            with self._tx() as conn:
                rows = conn.execute(
                    sa.select(t.slices)
                    .where(*where, t.slices.c.position > after)
                    .order_by(t.slices.c.position)
                    .limit(page_size)
                ).all()
            yield from rows
            if len(rows) < page_size:
                return
            after = rows[-1].position

    def slice_totals(self, job_id: str, epoch: int | None = None) -> dict[str, StatusTotals]:
        """Per status, the number of slices and their row/duration sums: one aggregate query
        (``seamline status`` at a million slices reads these, not the slices)."""
        c = t.slices.c
        timed = (c.duration_s > 0) & c.rows.is_not(None)
        with self._tx() as conn:
            if epoch is None:
                epoch = self._require_job(conn, job_id)
            rows = conn.execute(
                sa.select(
                    c.status,
                    sa.func.count(),
                    sa.func.coalesce(sa.func.sum(c.rows), 0),
                    sa.func.coalesce(sa.func.sum(c.est_rows), 0),
                    sa.func.coalesce(sa.func.sum(sa.case((timed, 1), else_=0)), 0),
                    sa.func.coalesce(sa.func.sum(sa.case((timed, c.rows), else_=0)), 0),
                    sa.func.coalesce(sa.func.sum(sa.case((timed, c.duration_s), else_=0.0)), 0),
                )
                .where(c.job_id == job_id, c.epoch == epoch)
                .group_by(c.status)
            ).all()
        return {
            str(r[0]): StatusTotals(
                int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), float(r[6])
            )
            for r in rows
        }

    def slice_counts(self, job_id: str, epoch: int | None = None) -> dict[str, int]:
        """The number of slices per status (one aggregate query)."""
        return {k: v.slices for k, v in self.slice_totals(job_id, epoch).items()}

    def get_slice(self, job_id: str, slice_id: str, epoch: int | None = None) -> SliceRecord:
        """One slice; :class:`StateError` if it is not in the plan."""
        with self._tx() as conn:
            if epoch is None:
                epoch = self._require_job(conn, job_id)
            return _record(self._row(conn, job_id, slice_id, epoch))

    def _row(self, conn: Connection, job_id: str, slice_id: str, epoch: int) -> Row[Any]:
        row = conn.execute(
            sa.select(t.slices).where(*_slice_key(job_id, epoch, slice_id))
        ).one_or_none()
        if row is None:
            raise StateError(f"job={job_id} epoch={epoch} slice={slice_id} is not in the plan")
        return row

    def _staged_row(self, conn: Connection, job_id: str, slice_id: str, epoch: int) -> Row[Any]:
        row = self._row(conn, job_id, slice_id, epoch)
        if row.status != "staged":
            raise StateError(
                f"job={job_id} slice={slice_id}: expected status 'staged', found {row.status!r}"
            )
        return row

    def _transition(
        self,
        job_id: str,
        slice_id: str,
        epoch: int,
        allowed: tuple[SliceStatus, ...],
        values: Mapping[str, Any],
    ) -> Row[Any]:
        """Check epoch and current status, then update; returns the row before the update."""
        with self._tx() as conn:
            self._check_epoch(conn, job_id, epoch)
            row = self._row(conn, job_id, slice_id, epoch)
            if row.status not in allowed:
                raise StateError(
                    f"job={job_id} slice={slice_id}: expected status in {list(allowed)}, "
                    f"found {row.status!r}"
                )
            extra = dict(values)
            if "finished_at" in extra and row.started_at is not None:
                duration = max(0.0, (extra["finished_at"] - row.started_at).total_seconds())
                extra["duration_s"] = duration
                extra["total_duration_s"] = row.total_duration_s + duration
            conn.execute(
                t.slices.update()
                .where(*_slice_key(job_id, epoch, slice_id))
                .values(**extra)
            )
            return row

    def mark_running(self, job_id: str, slice_id: str, epoch: int) -> int:
        """Start an attempt; returns its number (1 for the first)."""
        with self._tx() as conn:
            self._check_epoch(conn, job_id, epoch)
            row = self._row(conn, job_id, slice_id, epoch)
            if row.status not in ("pending", "failed", "running"):
                raise StateError(
                    f"job={job_id} slice={slice_id}: expected status pending, failed or "
                    f"running, found {row.status!r}"
                )
            attempt = int(row.attempts) + 1
            conn.execute(
                t.slices.update()
                .where(*_slice_key(job_id, epoch, slice_id))
                .values(status="running", attempts=attempt, started_at=_now(), finished_at=None)
            )
        return attempt

    def mark_committed(
        self,
        job_id: str,
        slice_id: str,
        epoch: int,
        *,
        rows: int,
        token: CommitToken | None,
        quarantined: int = 0,
        snapshot_id: int | None = None,
        checksum: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the slice's commit (its token as stored in the table, rows, checksum)."""
        doc = {"properties": token.to_properties(), "snapshot_id": snapshot_id} if token else None
        self._transition(
            job_id,
            slice_id,
            epoch,
            ("running",),
            {
                "status": "committed",
                "rows": rows,
                "quarantined": quarantined,
                "commit_token": doc,
                "checksum": dict(checksum) if checksum is not None else None,
                "last_error": None,
                "finished_at": _now(),
            },
        )

    def mark_staged(
        self,
        job_id: str,
        slice_id: str,
        epoch: int,
        *,
        rows: int,
        token: CommitToken,
        staged: Mapping[str, Any],
        quarantined: int = 0,
    ) -> None:
        """Record a staged slice (``publish = "atomic"``): its token and the JSON describing
        its written, uncommitted data files (kept with the token in ``commit_token``)."""
        doc = {"properties": token.to_properties(), "snapshot_id": None, "staged": dict(staged)}
        self._transition(
            job_id,
            slice_id,
            epoch,
            ("running",),
            {
                "status": "staged",
                "rows": rows,
                "quarantined": quarantined,
                "commit_token": doc,
                "last_error": None,
                "finished_at": _now(),
            },
        )

    def mark_published(
        self, job_id: str, epoch: int, slice_ids: Sequence[str], snapshot_id: int
    ) -> None:
        """Every staged slice in ``slice_ids`` becomes committed at the publish commit
        ``snapshot_id``, in one transaction (all or none)."""
        with self._tx() as conn:
            self._check_epoch(conn, job_id, epoch)
            for slice_id in slice_ids:
                row = self._staged_row(conn, job_id, slice_id, epoch)
                doc = {**(row.commit_token or {}), "snapshot_id": snapshot_id}
                conn.execute(
                    t.slices.update()
                    .where(*_slice_key(job_id, epoch, slice_id))
                    .values(status="committed", commit_token=doc)
                )

    def assign_batch(
        self, job_id: str, epoch: int, slice_ids: Sequence[str], batch_id: str
    ) -> None:
        """Record, before the coordinator's batch commit, that these staged slices go into the
        commit whose token is ``batch_id`` (kept in each slice's staged JSON as ``batch``): a
        coordinator killed after that commit finds it by this id and marks them committed."""
        with self._tx() as conn:
            self._check_epoch(conn, job_id, epoch)
            for slice_id in slice_ids:
                row = self._staged_row(conn, job_id, slice_id, epoch)
                doc = dict(row.commit_token or {})
                doc["staged"] = {**(doc.get("staged") or {}), "batch": batch_id}
                conn.execute(
                    t.slices.update()
                    .where(*_slice_key(job_id, epoch, slice_id))
                    .values(commit_token=doc)
                )

    def unstage(self, job_id: str, slice_id: str, epoch: int, reason: str) -> None:
        """A staged slice whose files must not be committed after all (its batch's commit is
        not in the table): ``failed`` with ``reason``, so the next run writes it afresh."""
        self._transition(
            job_id, slice_id, epoch, ("staged",),
            {"status": "failed", "last_error": reason[:_MAX_ERROR], "commit_token": None},
        )  # fmt: skip

    def mark_failed(self, job_id: str, slice_id: str, epoch: int, error: str) -> None:
        """Record a failed attempt (the message must not hold secrets: it is stored)."""
        self._transition(
            job_id,
            slice_id,
            epoch,
            ("running",),
            {"status": "failed", "last_error": error[:_MAX_ERROR], "finished_at": _now()},
        )

    def mark_reconciled(
        self,
        job_id: str,
        slice_id: str,
        epoch: int,
        checksum: Mapping[str, Any] | None = None,
    ) -> None:
        """Mark a committed slice as proven by reconciliation (optionally storing checksums)."""
        values: dict[str, Any] = {"status": "reconciled"}
        if checksum is not None:
            values["checksum"] = dict(checksum)
        self._transition(job_id, slice_id, epoch, ("committed", "reconciled"), values)
