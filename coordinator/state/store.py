"""The coordinator's durable state: jobs, cuts, plans, slice states, live progress, reconciles.

:class:`StateStore` is the one class other areas use. It is assembled from
:mod:`coordinator.state.base` (connection, schema version, jobs, epochs, cuts) and
:mod:`coordinator.state.slices` (the immutable plan and epoch-checked slice transitions);
this module adds live progress, reconcile results and lag pauses.

SQLite by default (WAL, busy timeout, ``BEGIN IMMEDIATE``), PostgreSQL by URL
(``postgresql+psycopg://user@host:port/db``). The URL's password is never logged or stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from coordinator.core.errors import StateError
from coordinator.core.values import Offset, PartitionId
from coordinator.state import schema as t
from coordinator.state.base import _now, safe_url, state_exists
from coordinator.state.lease import Lease, LeaseOwner, LeaseStore
from coordinator.state.runs import RunRecord, RunStore
from coordinator.state.slices import SliceRecord, SliceStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveProgress:
    """The live consumer's position on one partition."""

    partition: PartitionId
    committed_offset: Offset
    high_watermark: Offset
    lag: int
    quarantined: int
    updated_at: datetime


@dataclass(frozen=True)
class ReconcileRecord:
    """One stored reconciliation result."""

    job_id: str
    run_at: datetime
    reconciled: bool
    document: Mapping[str, Any]


@dataclass(frozen=True)
class PauseRecord:
    """One lag-throttling pause of the backfill."""

    started_at: datetime
    seconds: float
    reason: str


class StateStore(SliceStore, LeaseStore, RunStore):
    """Durable state of every job. ``StateStore(url)`` creates the schema if needed;
    ``StateStore(url, create=False)`` only opens an existing store (raises StateError)."""

    def record_live_progress(
        self,
        job_id: str,
        partition: int,
        committed_offset: int,
        high_watermark: int,
        *,
        quarantined: int = 0,
    ) -> None:
        """Upsert the live consumer's position on ``partition`` (lag = hwm - committed)."""
        if committed_offset < 0 or high_watermark < 0:
            raise StateError(
                f"job={job_id} partition={partition}: expected offsets >= 0, found "
                f"committed={committed_offset} hwm={high_watermark}"
            )
        values = {
            "committed_offset": committed_offset,
            "high_watermark": high_watermark,
            "lag": max(0, high_watermark - committed_offset),
            "quarantined": quarantined,
            "updated_at": _now(),
        }
        key = (t.live_progress.c.job_id == job_id) & (t.live_progress.c.partition == partition)
        with self._tx() as conn:
            updated = conn.execute(t.live_progress.update().where(key).values(**values))
            if updated.rowcount == 0:
                conn.execute(
                    t.live_progress.insert().values(job_id=job_id, partition=partition, **values)
                )

    def get_live_progress(self, job_id: str) -> list[LiveProgress]:
        """The live consumer's last recorded position per partition."""
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(t.live_progress)
                .where(t.live_progress.c.job_id == job_id)
                .order_by(t.live_progress.c.partition)
            ).all()
        return [
            LiveProgress(
                partition=PartitionId(r.partition),
                committed_offset=Offset(r.committed_offset),
                high_watermark=Offset(r.high_watermark),
                lag=r.lag,
                quarantined=r.quarantined,
                updated_at=r.updated_at,
            )
            for r in rows
        ]

    def record_reconcile(self, job_id: str, doc: Mapping[str, Any], reconciled: bool) -> int:
        """Store one reconciliation result (a JSON-serialisable document); returns its id."""
        with self._tx() as conn:
            result = conn.execute(
                t.reconcile_results.insert().values(
                    job_id=job_id, run_at=_now(), reconciled=reconciled, document=dict(doc)
                )
            )
            key = result.inserted_primary_key
        return int(key[0]) if key else 0

    def latest_reconcile(self, job_id: str) -> ReconcileRecord | None:
        """The newest reconciliation result of ``job_id``, or ``None``."""
        with self._tx() as conn:
            row = conn.execute(
                sa.select(t.reconcile_results)
                .where(t.reconcile_results.c.job_id == job_id)
                .order_by(t.reconcile_results.c.id.desc())
                .limit(1)
            ).one_or_none()
        if row is None:
            return None
        return ReconcileRecord(row.job_id, row.run_at, bool(row.reconciled), row.document)

    def record_pause(self, job_id: str, seconds: float, reason: str) -> None:
        """Record that the backfill paused ``seconds`` for live lag."""
        with self._tx() as conn:
            conn.execute(
                t.pauses.insert().values(
                    job_id=job_id, started_at=_now(), seconds=seconds, reason=reason
                )
            )

    def list_pauses(self, job_id: str) -> list[PauseRecord]:
        """Every recorded pause of ``job_id``, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(t.pauses).where(t.pauses.c.job_id == job_id).order_by(t.pauses.c.id)
            ).all()
        return [PauseRecord(r.started_at, r.seconds, r.reason) for r in rows]


__all__ = [
    "Lease",
    "LeaseOwner",
    "LiveProgress",
    "PauseRecord",
    "ReconcileRecord",
    "RunRecord",
    "SliceRecord",
    "StateStore",
    "safe_url",
    "state_exists",
]
