"""State store base: engine set-up, schema version check, jobs, epochs and cuts.

SQLAlchemy 2 Core over SQLite (default; WAL, busy timeout, ``BEGIN IMMEDIATE`` so every
transaction is atomic and serialised) or PostgreSQL (``postgresql+psycopg://``; the job row
is locked ``FOR UPDATE``). Every slice transition takes the caller's epoch and checks it
against the job's current epoch inside the same transaction (DESIGN §3): a stale coordinator
gets :class:`StaleEpochError` and changes nothing. The URL's password never reaches a log
line, an error message or the database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from coordinator.core.errors import StaleEpochError, StateError
from coordinator.core.logs import redact
from coordinator.core.values import Cut, Epoch, EventTimeMs, Offset, PartitionCut, PartitionId
from coordinator.state import schema as t

log = logging.getLogger(__name__)


def safe_url(url: str) -> str:
    """``url`` with every credential masked, for logs, messages and ``status``.

    Masks the userinfo password (up to the last ``@`` of the authority, so an unencoded
    ``@`` in a password cannot leak its tail as the "host") and secret query parameters
    (``password``, ``sslpassword``, ``passfile``, tokens, keys).
    """
    try:
        rendered = sa.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        rendered = url
    return redact(rendered)


def _create_private(path: Path) -> None:
    """Create the SQLite file owner-only (``0600``; SQLite gives its WAL the same mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return


def _now() -> datetime:
    return datetime.now(UTC)


def state_exists(url: str) -> bool:
    """Whether a state store has been created at ``url`` (never creates anything)."""
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        return bool(db) and db != ":memory:" and Path(str(db)).exists()
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return sa.inspect(conn).has_table(t.schema_version.name)
    except sa.exc.SQLAlchemyError as exc:
        raise _state_error(exc, url) from None
    finally:
        engine.dispose()


def _parse_url(url: str) -> sa.URL:
    try:
        return sa.make_url(url)
    except sa.exc.ArgumentError:
        raise StateError(
            f"state url={safe_url(url)} is not a database URL",
            hint="use sqlite:///path/to/state.db or postgresql+psycopg://user@host/db",
        ) from None


def _engine(url: str) -> Engine:
    parsed = _parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, pool_pre_ping=True)
    engine = sa.create_engine(parsed, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _state_error(exc: sa.exc.SQLAlchemyError, url: str) -> StateError:
    detail = redact(str(getattr(exc, "orig", None) or exc)).splitlines()[0]
    err = StateError(
        f"state store url={safe_url(url)} failed: {detail}",
        hint="check the state store is reachable and not locked, then re-run",
    )
    err.transient = isinstance(exc, sa.exc.OperationalError)
    return err


class StoreBase:
    """Connection, schema check, jobs, epochs and cuts (see the module docstring).

    ``create=False`` opens an existing store without creating tables or files (``plan
    --dry-run``); it raises :class:`StateError` if there is none.
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self._url = url
        parsed = _parse_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            path = Path(str(parsed.database))
            if create:
                _create_private(path)
            elif not path.exists():
                raise StateError(f"no state store at url={safe_url(url)}")
        self._engine = _engine(url)
        self._install_or_check(create)
        log.debug("state store open at %s", safe_url(url))

    @property
    def url(self) -> str:
        """The store's URL with the password masked."""
        return safe_url(self._url)

    def close(self) -> None:
        """Release every connection."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise _state_error(exc, self._url) from None

    def _install_or_check(self, create: bool) -> None:
        with self._tx() as conn:
            if not sa.inspect(conn).has_table(t.schema_version.name):
                if not create:
                    raise StateError(f"no state store at url={self.url}")
                t.metadata.create_all(conn)
                conn.execute(
                    t.schema_version.insert().values(version=t.SCHEMA_VERSION, installed_at=_now())
                )
                return
            found = sorted(conn.scalars(sa.select(t.schema_version.c.version)))
            if len(found) == 1 and found[0] < t.SCHEMA_VERSION and create:
                found = [self._migrate(conn, found[0])]
        if found != [t.SCHEMA_VERSION]:
            raise StateError(
                f"state store url={self.url}: expected schema version {t.SCHEMA_VERSION}, "
                f"found {found}",
                hint="upgrade it with any writing command (e.g. `seamline cut JOB`)"
                if found and max(found) < t.SCHEMA_VERSION
                else "use the seamline version that created this store, or a new state url",
            )

    def _migrate(self, conn: Connection, version: int) -> int:
        """Upgrade the schema from ``version`` step by step (in the caller's transaction)."""
        start = version
        while version < t.SCHEMA_VERSION and version in t.MIGRATIONS:
            for item in t.MIGRATIONS[version]:
                item.create(conn, checkfirst=True)
            version += 1
        conn.execute(t.schema_version.delete())
        conn.execute(t.schema_version.insert().values(version=version, installed_at=_now()))
        log.info("state store url=%s migrated from schema %d to %d", self.url, start, version)
        return version

    # -- jobs and epochs -------------------------------------------------------------------

    def ensure_job(self, job_id: str) -> Epoch:
        """Create the job at epoch 1 if it is new; return its current epoch."""
        with self._tx() as conn:
            current = self._epoch(conn, job_id, lock=True)
            if current is not None:
                return current
            now = _now()
            conn.execute(
                t.jobs.insert().values(job_id=job_id, epoch=1, created_at=now, updated_at=now)
            )
            return Epoch(1)

    def current_epoch(self, job_id: str) -> Epoch:
        """The job's current epoch; :class:`StateError` if the job is unknown."""
        with self._tx() as conn:
            return self._require_job(conn, job_id)

    def bump_epoch(self, job_id: str) -> Epoch:
        """Start a new epoch (a new cut); every older coordinator becomes stale."""
        with self._tx() as conn:
            new = Epoch(self._require_job(conn, job_id, lock=True) + 1)
            conn.execute(
                t.jobs.update()
                .where(t.jobs.c.job_id == job_id)
                .values(epoch=new, updated_at=_now())
            )
        log.info("job=%s moved to epoch=%d", job_id, new)
        return new

    def check_epoch(self, job_id: str, epoch: int) -> None:
        """Raise :class:`StaleEpochError` unless ``epoch`` is the job's current epoch."""
        with self._tx() as conn:
            self._check_epoch(conn, job_id, epoch)

    @contextmanager
    def epoch_held(self, job_id: str, epoch: int) -> Iterator[None]:
        """Check ``epoch`` and keep the job's row locked until the block ends.

        SQLite: the database write lock of ``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT ... FOR
        UPDATE`` on the job's row. :meth:`bump_epoch` takes the same lock, so a table commit
        made inside the block cannot interleave with a new epoch: it lands before the bump or
        the check refuses it (:class:`StaleEpochError`). Errors of the block propagate as they
        are; the lock is released either way.
        """
        conn = self._engine.connect()
        try:
            tx = conn.begin()
            self._check_epoch(conn, job_id, epoch)
        except sa.exc.SQLAlchemyError as exc:
            conn.close()
            raise _state_error(exc, self._url) from None
        except BaseException:
            conn.close()
            raise
        try:
            yield
        finally:
            try:
                tx.rollback()  # nothing was written: ending the transaction frees the lock
            except sa.exc.SQLAlchemyError as exc:
                log.warning("job=%s: releasing the epoch lock failed: %s", job_id, exc)
            finally:
                conn.close()

    def _epoch(self, conn: Connection, job_id: str, *, lock: bool = False) -> Epoch | None:
        query = sa.select(t.jobs.c.epoch).where(t.jobs.c.job_id == job_id)
        value = conn.scalar(query.with_for_update() if lock else query)
        return None if value is None else Epoch(int(value))

    def _require_job(self, conn: Connection, job_id: str, *, lock: bool = False) -> Epoch:
        epoch = self._epoch(conn, job_id, lock=lock)
        if epoch is None:
            raise StateError(
                f"job={job_id} is not in the state store url={self.url}",
                hint=f"run `seamline cut` for job={job_id} first",
            )
        return epoch

    def _check_epoch(self, conn: Connection, job_id: str, epoch: int) -> None:
        current = self._require_job(conn, job_id, lock=True)
        if current > epoch:
            raise StaleEpochError(
                f"job={job_id}: expected epoch={current}, found epoch={epoch} (stale coordinator)",
                hint="a newer cut superseded this run; stop this coordinator",
            )
        if current < epoch:
            raise StateError(f"job={job_id}: expected epoch<={current}, found epoch={epoch}")

    # -- the cut ---------------------------------------------------------------------------

    def save_cut(self, cut: Cut) -> Cut:
        """Store ``cut`` for its epoch unless one is stored already; return the stored cut.

        The epoch must be the job's current one (a stale coordinator cannot take a cut).
        """
        with self._tx() as conn:
            self._check_epoch(conn, cut.job_id, cut.epoch)
            existing = self._load_cut(conn, cut.job_id, cut.epoch)
            if existing is not None:
                return existing
            conn.execute(
                t.cuts.insert().values(
                    job_id=cut.job_id,
                    epoch=cut.epoch,
                    topic=cut.topic,
                    taken_at=cut.taken_at,
                    watermark_ms=cut.watermark_ms,
                    plan_hash=None,
                )
            )
            if cut.partitions:
                conn.execute(
                    t.cut_partitions.insert(),
                    [
                        {
                            "job_id": cut.job_id,
                            "epoch": cut.epoch,
                            "partition": p.partition,
                            "log_start": p.log_start,
                            "hwm": p.hwm,
                        }
                        for p in cut.partitions
                    ],
                )
        log.info("job=%s epoch=%d cut stored", cut.job_id, cut.epoch)
        return cut

    def get_cut(self, job_id: str, epoch: int | None = None) -> Cut | None:
        """The cut of ``epoch`` (default: the job's current epoch), or ``None``."""
        with self._tx() as conn:
            current = self._epoch(conn, job_id)
            if current is None:
                return None
            return self._load_cut(conn, job_id, current if epoch is None else epoch)

    def _load_cut(self, conn: Connection, job_id: str, epoch: int) -> Cut | None:
        row = conn.execute(
            sa.select(t.cuts).where(t.cuts.c.job_id == job_id, t.cuts.c.epoch == epoch)
        ).one_or_none()
        if row is None:
            return None
        parts = conn.execute(
            sa.select(t.cut_partitions)
            .where(t.cut_partitions.c.job_id == job_id, t.cut_partitions.c.epoch == epoch)
            .order_by(t.cut_partitions.c.partition)
        ).all()
        return Cut(
            job_id=job_id,
            topic=row.topic,
            partitions=tuple(
                PartitionCut(PartitionId(p.partition), Offset(p.log_start), Offset(p.hwm))
                for p in parts
            ),
            taken_at=row.taken_at,
            epoch=Epoch(row.epoch),
            watermark_ms=None if row.watermark_ms is None else EventTimeMs(row.watermark_ms),
            plan_hash=row.plan_hash,
        )
