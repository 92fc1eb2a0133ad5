"""Detached runs in the state store (``seamline run --detach``, ``seamline wait``).

A detached run is recorded before its process starts (run id, host, log path, the run's
options), then given its pid; the detached process records its exit code when it ends. A run
with no end whose process no longer exists on this host died without recording one (``kill
-9``, a reboot): :attr:`RunRecord.state` says ``died``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa

from coordinator.core.errors import StateError
from coordinator.state import schema as t
from coordinator.state.base import StoreBase, _now
from coordinator.state.lease import pid_gone

log = logging.getLogger(__name__)

RunState = Literal["starting", "running", "ended", "died"]


@dataclass(frozen=True)
class RunRecord:
    """One detached run as stored."""

    run_id: str
    job_id: str
    pid: int | None
    host: str
    log_path: str
    args: tuple[str, ...]
    started_at: datetime
    ended_at: datetime | None
    exit_code: int | None

    @property
    def state(self) -> RunState:
        """``ended`` once an exit code is recorded; ``died`` when its process is gone
        (checked on this host only); else ``running`` (``starting`` before it has a pid)."""
        if self.exit_code is not None:
            return "ended"
        if self.pid is None:
            return "starting"
        if self.host == socket.gethostname() and pid_gone(self.pid):
            return "died"
        return "running"

    def to_json(self) -> dict[str, object]:
        """Plain JSON (with the derived ``state``)."""
        return {
            "run_id": self.run_id,
            "job_id": self.job_id,
            "state": self.state,
            "pid": self.pid,
            "host": self.host,
            "log_path": self.log_path,
            "args": list(self.args),
            "started_at": self.started_at.isoformat(),
            "ended_at": None if self.ended_at is None else self.ended_at.isoformat(),
            "exit_code": self.exit_code,
        }


class RunStore(StoreBase):
    """Detached-run rows of the state store (see the module docstring)."""

    def record_run(self, job_id: str, run_id: str, log_path: str, args: Sequence[str]) -> None:
        """A new detached run of ``job_id``, before its process exists."""
        with self._tx() as conn:
            self._require_job(conn, job_id)
            conn.execute(
                t.runs.insert().values(
                    run_id=run_id, job_id=job_id, pid=None, host=socket.gethostname(),
                    log_path=log_path, args=list(args), started_at=_now(),
                )
            )  # fmt: skip

    def set_run_pid(self, run_id: str, pid: int) -> None:
        """The detached process of ``run_id`` (recorded once it is started)."""
        with self._tx() as conn:
            conn.execute(t.runs.update().where(t.runs.c.run_id == run_id).values(pid=pid))

    def end_run(self, run_id: str, exit_code: int) -> None:
        """``run_id`` ended with ``exit_code``."""
        with self._tx() as conn:
            done = conn.execute(
                t.runs.update()
                .where(t.runs.c.run_id == run_id)
                .values(ended_at=_now(), exit_code=exit_code)
            )
        if not done.rowcount:
            raise StateError(f"run_id={run_id}: expected a recorded detached run, found none")

    def get_run(self, job_id: str, run_id: str | None = None) -> RunRecord | None:
        """``run_id`` of ``job_id``, or its newest detached run when ``run_id`` is None."""
        query = sa.select(t.runs).where(t.runs.c.job_id == job_id)
        if run_id is not None:
            query = query.where(t.runs.c.run_id == run_id)
        with self._tx() as conn:
            row = conn.execute(
                query.order_by(t.runs.c.started_at.desc(), t.runs.c.run_id).limit(1)
            ).one_or_none()
        return None if row is None else _record(row)

    def list_runs(self, job_id: str, limit: int = 5) -> list[RunRecord]:
        """The newest ``limit`` detached runs of ``job_id``, newest first."""
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(t.runs)
                .where(t.runs.c.job_id == job_id)
                .order_by(t.runs.c.started_at.desc(), t.runs.c.run_id)
                .limit(limit)
            ).all()
        return [_record(r) for r in rows]


def _record(row: sa.Row[object]) -> RunRecord:
    m = row._mapping
    return RunRecord(
        m["run_id"], m["job_id"], m["pid"], m["host"], m["log_path"], tuple(m["args"]),
        m["started_at"], m["ended_at"], m["exit_code"],
    )  # fmt: skip


__all__ = ["RunRecord", "RunState", "RunStore"]
