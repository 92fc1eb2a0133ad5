"""The coordinator lease: one coordinator per job runs slices (DESIGN §6).

A lease row per job names its holder (owner id, pid, host) with ``acquired_at``, a
``heartbeat_at`` the holder renews and an ``expires_at``. :meth:`LeaseStore.acquire_lease`
takes the lease when there is none, when it expired (the holder stopped heartbeating), when
its holder is a process of this host that no longer exists (a ``kill -9``), or with
``takeover``; otherwise it raises :class:`LeaseHeldError` naming the holder. A holder whose
renewal finds another owner has lost the lease (someone took it over) and must stop.

Every lease change runs in one transaction that first locks the job's row (SQLite: the
``BEGIN IMMEDIATE`` write lock; PostgreSQL: ``SELECT ... FOR UPDATE``), so two coordinators
racing for a free lease are serialised: exactly one wins.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coordinator.core.errors import LeaseHeldError, StateError
from coordinator.state import schema as t
from coordinator.state.base import StoreBase, _now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseOwner:
    """Who holds (or asks for) a lease."""

    owner_id: str
    pid: int
    host: str

    def __post_init__(self) -> None:
        if not self.owner_id or self.pid <= 0 or not self.host:
            raise ValueError(f"expected an owner id, a pid > 0 and a host, found {self}")

    @classmethod
    def this_process(cls) -> LeaseOwner:
        """A new owner id for this process on this host."""
        return cls(uuid.uuid4().hex, os.getpid(), socket.gethostname())


@dataclass(frozen=True)
class Lease:
    """One job's lease as stored."""

    job_id: str
    owner: LeaseOwner
    acquired_at: datetime
    heartbeat_at: datetime
    expires_at: datetime

    def expired(self, now: datetime) -> bool:
        """Whether the holder stopped renewing in time."""
        return now >= self.expires_at

    def describe(self) -> str:
        """``pid=…, host=…, since=…`` for messages."""
        return (
            f"pid={self.owner.pid}, host={self.owner.host}, "
            f"since={self.acquired_at.isoformat(timespec='seconds')}"
        )


def pid_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        return False
    return False


def _holder_dead(lease: Lease, asking: LeaseOwner, now: datetime) -> bool:
    if lease.expired(now):
        return True
    return lease.owner.host == asking.host and pid_gone(lease.owner.pid)


def holder_alive(lease: Lease, now: datetime | None = None) -> bool:
    """Whether ``lease``'s holder is still running its job: renewing in time and, on this
    host, a process that exists."""
    return not _holder_dead(lease, LeaseOwner("status", os.getpid(), socket.gethostname()),
                            now or _now())  # fmt: skip


class LeaseStore(StoreBase):
    """Lease operations of the state store (see the module docstring)."""

    def get_lease(self, job_id: str) -> Lease | None:
        """The job's lease row, or ``None``."""
        with self._tx() as conn:
            return self._lease(conn, job_id)

    def acquire_lease(
        self, job_id: str, owner: LeaseOwner, ttl_s: float, *, takeover: bool = False
    ) -> Lease:
        """Take the job's lease for ``ttl_s`` seconds (module docstring for when)."""
        if ttl_s <= 0:
            raise StateError(f"job={job_id}: expected a lease ttl > 0, found {ttl_s}")
        with self._tx() as conn:
            self._require_job(conn, job_id, lock=True)
            now = _now()
            held = self._lease(conn, job_id)
            if held is not None and held.owner.owner_id != owner.owner_id:
                if not (takeover or _holder_dead(held, owner, now)):
                    raise LeaseHeldError(
                        f"another coordinator ({held.describe()}) is running job={job_id}: "
                        f"expected no live lease, found owner={held.owner.owner_id} "
                        f"heartbeat_at={held.heartbeat_at.isoformat(timespec='seconds')}",
                        hint="wait for it, or take over with `seamline run --takeover` once "
                        "it is dead",
                    )
                log.warning("job=%s: taking the lease over from %s", job_id, held.describe())
            lease = Lease(job_id, owner, now, now, now + timedelta(seconds=ttl_s))
            conn.execute(t.leases.delete().where(t.leases.c.job_id == job_id))
            conn.execute(t.leases.insert().values(**_row(lease)))
        log.info("job=%s lease acquired by pid=%d host=%s", job_id, owner.pid, owner.host)
        return lease

    def renew_lease(self, job_id: str, owner: LeaseOwner, ttl_s: float) -> bool:
        """Heartbeat: extend ``owner``'s lease; ``False`` if it is no longer ``owner``'s."""
        now = _now()
        with self._tx() as conn:
            done = conn.execute(
                t.leases.update()
                .where(t.leases.c.job_id == job_id, t.leases.c.owner_id == owner.owner_id)
                .values(heartbeat_at=now, expires_at=now + timedelta(seconds=ttl_s))
            )
        return bool(done.rowcount)

    def release_lease(self, job_id: str, owner: LeaseOwner) -> bool:
        """Give ``owner``'s lease up; ``False`` if it held none."""
        with self._tx() as conn:
            done = conn.execute(
                t.leases.delete().where(
                    t.leases.c.job_id == job_id, t.leases.c.owner_id == owner.owner_id
                )
            )
        return bool(done.rowcount)

    def _lease(self, conn: Connection, job_id: str) -> Lease | None:
        row = conn.execute(sa.select(t.leases).where(t.leases.c.job_id == job_id)).one_or_none()
        if row is None:
            return None
        owner = LeaseOwner(row.owner_id, row.pid, row.host)
        return Lease(job_id, owner, row.acquired_at, row.heartbeat_at, row.expires_at)


def _row(lease: Lease) -> dict[str, object]:
    return {
        "job_id": lease.job_id,
        "owner_id": lease.owner.owner_id,
        "pid": lease.owner.pid,
        "host": lease.owner.host,
        "acquired_at": lease.acquired_at,
        "heartbeat_at": lease.heartbeat_at,
        "expires_at": lease.expires_at,
    }


__all__ = ["Lease", "LeaseOwner", "LeaseStore"]
