"""State of incident reprocessing runs, beside (never inside) the job's immutable plan.

Two tables of their own (``reprocess_runs``, ``reprocess_slices``), created on first use in
the job's state store; the original plan, its slices and its plan hash are never touched.
A run's id is derived from what it does (job, epoch, range, transform), so running the same
reprocess again finds the same run and its committed slices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from coordinator.core.errors import StateError
from coordinator.core.values import CommitToken, Slice
from coordinator.state.base import _now
from coordinator.state.codec import scope_from_json, scope_to_json
from coordinator.state.schema import UtcDateTime
from coordinator.state.store import StateStore

log = logging.getLogger(__name__)

_meta = sa.MetaData()

runs = sa.Table(
    "reprocess_runs",
    _meta,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(128), nullable=False, index=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),  # range, transform, cut hwm
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("reconciled", sa.Boolean, nullable=True),
    sa.Column("document", sa.JSON, nullable=True),
)

slices = sa.Table(
    "reprocess_slices",
    _meta,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("slice_id", sa.String(255), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("scope", sa.JSON, nullable=False),
    sa.Column("files", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=True),
    sa.Column("commit_token", sa.JSON, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
)


@dataclass(frozen=True)
class ReprocessSlice:
    """One reprocess slice and where it stands."""

    slice: Slice
    status: str  # pending | committed | failed
    attempts: int
    rows: int | None


class ReprocessStore(StateStore):
    """The job's state store plus the reprocess tables (created if missing)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        super().__init__(url, create=create)
        _meta.create_all(self._engine, checkfirst=True)

    def save_run(
        self, run_id: str, job_id: str, epoch: int, spec: Mapping[str, Any], plan: Sequence[Slice]
    ) -> None:
        """Store a run and its slices once; the same run again is a no-op.

        Raises ``StateError`` if the run id exists with other slices (it never should: the id
        is derived from what the run does).
        """
        with self._tx() as conn:
            found = conn.execute(
                sa.select(slices.c.slice_id).where(slices.c.run_id == run_id)
            ).all()
            if found:
                if sorted(r.slice_id for r in found) != sorted(s.slice_id for s in plan):
                    raise StateError(
                        f"job={job_id} reprocess_run={run_id}: expected the stored slices, "
                        "found a different slice list",
                        hint="the topic changed below the cut; take a new cut (--new-cut)",
                    )
                return
            now = _now()
            conn.execute(
                runs.insert().values(
                    run_id=run_id, job_id=job_id, epoch=epoch, spec=dict(spec),
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip
            if plan:
                conn.execute(
                    slices.insert(),
                    [
                        {
                            "run_id": run_id, "slice_id": s.slice_id, "position": i,
                            "scope": scope_to_json(s.scope), "files": list(s.files),
                            "status": "pending", "attempts": 0,
                        }
                        for i, s in enumerate(plan)
                    ],
                )  # fmt: skip

    def run_slices(self, run_id: str) -> list[ReprocessSlice]:
        """The run's slices in order."""
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(slices).where(slices.c.run_id == run_id).order_by(slices.c.position)
            ).all()
        return [
            ReprocessSlice(
                Slice(r.slice_id, scope_from_json(r.scope), tuple(r.files)),
                r.status,
                r.attempts,
                r.rows,
            )
            for r in rows
        ]

    def start_attempt(self, run_id: str, slice_id: str) -> int:
        """Count an attempt; returns its number (1 for the first)."""
        with self._tx() as conn:
            key = (slices.c.run_id == run_id) & (slices.c.slice_id == slice_id)
            row = conn.execute(sa.select(slices.c.attempts).where(key)).one()
            attempt = int(row.attempts) + 1
            conn.execute(slices.update().where(key).values(attempts=attempt))
        return attempt

    def finish_slice(
        self,
        run_id: str,
        slice_id: str,
        *,
        rows: int | None = None,
        token: CommitToken | None = None,
        error: str | None = None,
    ) -> None:
        """Record a slice's commit (``error`` None) or a failed attempt."""
        values: dict[str, Any] = {"status": "failed", "last_error": (error or "")[:4000]}
        if error is None:
            values = {
                "status": "committed", "rows": rows, "last_error": None,
                "commit_token": token.to_properties() if token else None,
            }  # fmt: skip
        with self._tx() as conn:
            key = (slices.c.run_id == run_id) & (slices.c.slice_id == slice_id)
            conn.execute(slices.update().where(key).values(**values))

    def finish_run(self, run_id: str, reconciled: bool, document: Mapping[str, Any]) -> None:
        """Store the run's reconciliation."""
        with self._tx() as conn:
            conn.execute(
                runs.update()
                .where(runs.c.run_id == run_id)
                .values(reconciled=reconciled, document=dict(document), updated_at=_now())
            )
