"""The state store contract: the same behaviour suite on SQLite and on a real PostgreSQL.

PostgreSQL comes from Debian's packages (installed with apt-get if absent); a throw-away
cluster is initdb'd in a temp dir and started on a free loopback port as the ``postgres``
user (postgres refuses to run as root). If that cannot be done the suite FAILS, never skips.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from coordinator.core.errors import ExitCode, LeaseHeldError, StaleEpochError, StateError
from coordinator.core.values import (
    CommitToken,
    Cut,
    Epoch,
    EventTimeMs,
    Offset,
    OffsetRange,
    PartitionCut,
    PartitionId,
    Scope,
    Slice,
    TimeBucket,
)
from coordinator.state import schema
from coordinator.state.store import LeaseOwner, StateStore, state_exists
from tests.apt import apt_install

_NOW = datetime(2024, 5, 1, tzinfo=UTC)

PG_PASSWORD = "pw-Zq8-never-logged"
JOB = "orders"


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, db: str, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql+psycopg://{self.user}:{pw}@{self.host}:{self.port}/{db}"


def _pg_bindir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not dirs:
        done = apt_install("postgresql")
        if done.returncode != 0:
            pytest.fail(f"PostgreSQL could not be installed (apt-get install postgresql): "
                        f"{done.stderr[-2000:]}")  # fmt: skip
        dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not dirs:
        pytest.fail("PostgreSQL could not be provided: no initdb after apt-get install postgresql")
    return Path(dirs[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for this test session (fails loudly if impossible)."""
    bindir = _pg_bindir()
    # Running as root, the server runs as ``postgres``, which must be able to reach its data dir:
    # TMPDIR may be a root-only 0700 dir (CI makes one), so the cluster goes under /tmp itself.
    root = Path(tempfile.mkdtemp(prefix="seamline-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(PG_PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    root.chmod(0o700)
    port = _free_port()
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "seamline", "-A", "scram-sha-256"]
    subprocess.run(_as_postgres([*initdb, f"--pwfile={pwfile}"]), check=True, capture_output=True)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    ctl = str(bindir / "pg_ctl")
    start = [ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"]
    res = subprocess.run(_as_postgres(start), capture_output=True, text=True)
    if res.returncode != 0:
        log_text = (root / "log").read_text() if (root / "log").exists() else ""
        pytest.fail(f"PostgreSQL did not start: {res.stderr}\n{log_text}")
    try:
        yield PgServer("127.0.0.1", port, "seamline", PG_PASSWORD)
    finally:
        subprocess.run(_as_postgres([ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]))
        shutil.rmtree(root, ignore_errors=True)


def _new_pg_database(server: PgServer) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = f"host={server.host} port={server.port} user={server.user} dbname=postgres"
    with psycopg.connect(dsn, password=server.password, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for a fresh, empty state store on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'job.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return _new_pg_database(server)


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    s = StateStore(store_url)
    yield s
    s.close()


def _cut(epoch: int = 1, job_id: str = JOB) -> Cut:
    return Cut(
        job_id=job_id,
        topic="orders",
        partitions=(
            PartitionCut(PartitionId(0), Offset(0), Offset(250)),
            PartitionCut(PartitionId(1), Offset(10), Offset(10)),
        ),
        taken_at=datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC),
        epoch=Epoch(epoch),
        watermark_ms=EventTimeMs(1_714_566_615_000),
    )


def _plan() -> list[Slice]:
    day = TimeBucket(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
    return [
        Slice("k-p0-000000000-000000100", Scope("kafka", (_r(0, 0, 100),)), est_rows=100),
        Slice("k-p0-000000100-000000250", Scope("kafka", (_r(0, 100, 250),)), est_rows=150),
        Slice("a-day-20240101", Scope("archive", bucket=day), files=("a/1.parquet",)),
    ]


def _r(p: int, a: int, b: int) -> OffsetRange:
    return OffsetRange(PartitionId(p), Offset(a), Offset(b))


def _planned(store: StateStore, epoch: int = 1) -> list[Slice]:
    store.ensure_job(JOB)
    store.save_cut(_cut(epoch))
    plan = _plan()
    store.save_plan(JOB, epoch, plan, "h" * 64)
    return plan


def test_new_job_starts_at_epoch_one_and_ensure_is_idempotent(store: StateStore) -> None:
    assert store.ensure_job(JOB) == 1
    assert store.ensure_job(JOB) == 1
    assert store.current_epoch(JOB) == 1


def test_unknown_job_is_a_clear_state_error(store: StateStore) -> None:
    with pytest.raises(StateError, match="job=nope is not in the state store"):
        store.current_epoch("nope")
    assert store.get_cut("nope") is None


def test_unknown_schema_version_is_refused(store_url: str) -> None:
    StateStore(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_version SET version = 99"))
    engine.dispose()
    expected = rf"expected schema version {schema.SCHEMA_VERSION}, found \[99\]"
    with pytest.raises(StateError, match=expected):
        StateStore(store_url)


def test_open_existing_only_never_creates(store_url: str) -> None:
    assert not state_exists(store_url)
    with pytest.raises(StateError, match="no state store"):
        StateStore(store_url, create=False)
    assert not state_exists(store_url)
    StateStore(store_url).close()
    assert state_exists(store_url)
    StateStore(store_url, create=False).close()


def test_cut_round_trips_and_first_cut_wins(store: StateStore) -> None:
    store.ensure_job(JOB)
    cut = _cut()
    assert store.save_cut(cut) == cut
    assert store.get_cut(JOB) == cut
    later = Cut(JOB, "orders", (), datetime(2025, 1, 1, tzinfo=UTC), Epoch(1))
    assert store.save_cut(later) == cut  # taken once per epoch
    assert store.get_cut(JOB, epoch=2) is None


def test_plan_is_stored_once_and_immutable(store: StateStore) -> None:
    plan = _planned(store)
    records = store.list_slices(JOB)
    assert [r.slice for r in records] == plan
    assert {r.status for r in records} == {"pending"}
    assert all(r.attempts == 0 and r.epoch == 1 for r in records)
    cut = store.get_cut(JOB)
    assert cut is not None and cut.plan_hash == "h" * 64
    store.save_plan(JOB, 1, plan, "h" * 64)  # the same plan again: no-op
    assert len(store.list_slices(JOB)) == 3
    with pytest.raises(StateError, match="the plan is immutable"):
        store.save_plan(JOB, 1, plan[:1], "x" * 64)


def test_plan_needs_a_cut(store: StateStore) -> None:
    store.ensure_job(JOB)
    with pytest.raises(StateError, match="no cut stored"):
        store.save_plan(JOB, 1, _plan(), "h" * 64)


def test_slice_lifecycle_records_attempts_rows_token_and_durations(store: StateStore) -> None:
    plan = _planned(store)
    sid = plan[0].slice_id
    assert store.mark_running(JOB, sid, 1) == 1
    store.mark_failed(JOB, sid, 1, "boom: expected 3 columns, found 2")
    failed = store.get_slice(JOB, sid)
    assert failed.status == "failed" and failed.last_error is not None
    assert failed.duration_s is not None and failed.finished_at is not None
    assert store.mark_running(JOB, sid, 1) == 2
    token = CommitToken(JOB, sid, 2, Epoch(1), "backfill", plan[0].scope.ranges)
    store.mark_committed(
        JOB, sid, 1, rows=100, token=token, snapshot_id=42, checksum={"sum": "1", "n": 100}
    )
    done = store.get_slice(JOB, sid)
    assert (done.status, done.attempts, done.rows, done.token) == ("committed", 2, 100, token)
    assert done.snapshot_id == 42 and done.last_error is None
    assert done.total_duration_s >= (done.duration_s or 0.0)
    store.mark_reconciled(JOB, sid, 1, checksum={"sum": "1", "n": 100, "scheme": "v1"})
    rec = store.get_slice(JOB, sid)
    assert rec.status == "reconciled" and rec.checksum == {"sum": "1", "n": 100, "scheme": "v1"}


def test_staged_slices_keep_their_files_and_are_published_together(store: StateStore) -> None:
    plan = _planned(store)
    a, b = plan[0].slice_id, plan[1].slice_id
    token = CommitToken(JOB, a, 1, Epoch(1), "backfill", plan[0].scope.ranges)
    files = {"files": [{"file_path": "s3://w/x.parquet", "lower_bounds": [[1, {"hex": "00"}]]}]}
    for sid in (a, b):
        store.mark_running(JOB, sid, 1)
    store.mark_staged(JOB, a, 1, rows=7, token=token, staged=files)
    got = store.get_slice(JOB, a)
    assert (got.status, got.rows, got.token, got.staged) == ("staged", 7, token, files)
    with pytest.raises(StateError, match="expected status 'staged', found 'running'"):
        store.mark_published(JOB, 1, [a, b], snapshot_id=9)  # all or none
    assert store.get_slice(JOB, a).status == "staged"
    store.mark_staged(JOB, b, 1, rows=0, token=token, staged={"files": []})
    store.mark_published(JOB, 1, [a, b], snapshot_id=9)
    for sid in (a, b):
        done = store.get_slice(JOB, sid)
        assert (done.status, done.snapshot_id) == ("committed", 9) and done.staged is not None


def test_a_batch_is_recorded_on_its_staged_slices_and_an_unstaged_slice_runs_again(
    store: StateStore,
) -> None:
    plan = _planned(store)
    a, b = plan[0].slice_id, plan[1].slice_id
    token = CommitToken(JOB, a, 1, Epoch(1), "backfill", plan[0].scope.ranges)
    for sid in (a, b):
        store.mark_running(JOB, sid, 1)
        store.mark_staged(JOB, sid, 1, rows=3, token=token, staged={"files": ["f"]})
    store.assign_batch(JOB, 1, [a, b], "batch.e1.x")
    assert store.get_slice(JOB, a).staged == {"files": ["f"], "batch": "batch.e1.x"}
    store.unstage(JOB, b, 1, "its batch batch.e1.x is not in the table")
    got = store.get_slice(JOB, b)
    assert (got.status, got.staged, got.token) == ("failed", None, None)
    assert "not in the table" in (got.last_error or "")
    assert store.mark_running(JOB, b, 1) == 2  # it runs again
    with pytest.raises(StateError, match="expected status 'staged', found 'running'"):
        store.assign_batch(JOB, 1, [a, b], "batch.e1.y")  # all or none
    assert store.get_slice(JOB, a).staged == {"files": ["f"], "batch": "batch.e1.x"}


def test_invalid_transitions_are_refused(store: StateStore) -> None:
    plan = _planned(store)
    sid = plan[0].slice_id
    with pytest.raises(StateError, match="expected status in \\['running'\\], found 'pending'"):
        store.mark_committed(JOB, sid, 1, rows=1, token=None)
    with pytest.raises(StateError, match="not in the plan"):
        store.mark_running(JOB, "k-nope", 1)
    store.mark_running(JOB, sid, 1)
    store.mark_committed(JOB, sid, 1, rows=1, token=None)
    with pytest.raises(StateError, match="found 'committed'"):
        store.mark_running(JOB, sid, 1)
    with pytest.raises(StateError, match="found 'pending'"):
        store.mark_reconciled(JOB, plan[1].slice_id, 1)


def test_running_slice_can_restart_after_a_crash(store: StateStore) -> None:
    plan = _planned(store)
    sid = plan[0].slice_id
    store.mark_running(JOB, sid, 1)
    assert store.mark_running(JOB, sid, 1) == 2  # a dead coordinator left it running


def test_stale_epoch_cannot_mark_take_cut_or_plan(store_url: str) -> None:
    old = StateStore(store_url)
    plan = _planned(old)
    old.mark_running(JOB, plan[0].slice_id, 1)
    new = StateStore(store_url)  # a second coordinator takes a new cut
    assert new.bump_epoch(JOB) == 2
    before = old.list_slices(JOB, epoch=1)
    for call in (
        lambda: old.mark_running(JOB, plan[1].slice_id, 1),
        lambda: old.mark_committed(JOB, plan[0].slice_id, 1, rows=5, token=None),
        lambda: old.mark_failed(JOB, plan[0].slice_id, 1, "x"),
        lambda: old.mark_reconciled(JOB, plan[0].slice_id, 1),
        lambda: old.save_cut(_cut(1)),
        lambda: old.save_plan(JOB, 1, plan, "h" * 64),
        lambda: old.check_epoch(JOB, 1),
    ):
        with pytest.raises(StaleEpochError, match="expected epoch=2, found epoch=1"):
            call()
    assert old.list_slices(JOB, epoch=1) == before
    new.save_cut(_cut(2))
    assert new.get_cut(JOB) == _cut(2)
    assert new.list_slices(JOB) == []  # epoch 2 has no plan yet
    old.close()
    new.close()


def test_concurrent_writers_each_land_atomically(store_url: str) -> None:
    setup = StateStore(store_url)
    setup.ensure_job(JOB)
    setup.save_cut(_cut())
    plan = [Slice(f"k-p0-{i:03d}", Scope("kafka", (_r(0, i, i + 1),))) for i in range(24)]
    setup.save_plan(JOB, 1, plan, "c" * 64)
    errors: list[BaseException] = []

    def worker(ids: list[str]) -> None:
        s = StateStore(store_url)
        try:
            for sid in ids:
                attempt = s.mark_running(JOB, sid, 1)
                s.mark_committed(JOB, sid, 1, rows=attempt, token=None)
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.close()

    threads = [
        threading.Thread(target=worker, args=([p.slice_id for p in plan[k::4]],)) for k in range(4)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    records = setup.list_slices(JOB)
    assert [(r.status, r.attempts, r.rows) for r in records] == [("committed", 1, 1)] * 24
    setup.close()


def test_live_progress_upserts_per_partition(store: StateStore) -> None:
    store.record_live_progress(JOB, 0, 100, 150, quarantined=2)
    store.record_live_progress(JOB, 1, 7, 7)
    store.record_live_progress(JOB, 0, 140, 160, quarantined=3)
    got = store.get_live_progress(JOB)
    assert [
        (p.partition, p.committed_offset, p.high_watermark, p.lag, p.quarantined) for p in got
    ] == [
        (0, 140, 160, 20, 3),
        (1, 7, 7, 0, 0),
    ]
    assert got[0].updated_at.tzinfo is not None
    with pytest.raises(StateError, match="expected offsets >= 0"):
        store.record_live_progress(JOB, 0, -1, 0)


def test_reconcile_results_keep_the_latest(store: StateStore) -> None:
    assert store.latest_reconcile(JOB) is None
    store.record_reconcile(JOB, {"lost": 1, "slices": ["a"]}, False)
    store.record_reconcile(JOB, {"lost": 0, "slices": ["a"]}, True)
    latest = store.latest_reconcile(JOB)
    assert latest is not None and latest.reconciled is True
    assert latest.document == {"lost": 0, "slices": ["a"]}


def test_pauses_are_recorded(store: StateStore) -> None:
    store.record_pause(JOB, 1.5, "live lag=120000 > lag_threshold=100000")
    store.record_pause(JOB, 0.5, "live lag=101000 > lag_threshold=100000")
    assert [(p.seconds, p.reason[:12]) for p in store.list_pauses(JOB)] == [
        (1.5, "live lag=120"),
        (0.5, "live lag=101"),
    ]


def test_password_never_reaches_logs_errors_or_the_database(
    pg_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = _new_pg_database(pg_server)
    caplog.set_level(logging.DEBUG)
    with StateStore(url) as s:
        assert PG_PASSWORD not in s.url
        _planned(s)
        s.mark_running(JOB, "a-day-20240101", 1)
        s.mark_failed(JOB, "a-day-20240101", 1, "x")
    assert PG_PASSWORD not in caplog.text
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        dump = [
            conn.execute(sa.text(f"SELECT * FROM {name}")).all()
            for name in ("schema_version", "jobs", "cuts", "cut_partitions", "slices")
        ]
    engine.dispose()
    assert PG_PASSWORD not in repr(dump)
    wrong = pg_server.url(url.rsplit("/", 1)[1], password="wrong-Secret-77")
    with pytest.raises(StateError) as info:
        StateStore(wrong)
    assert "wrong-Secret-77" not in str(info.value)
    assert "password authentication failed" in str(info.value)


def test_epoch_lock_is_held_across_the_block_so_no_new_epoch_interleaves(store_url: str) -> None:
    """``epoch_held`` keeps the job locked: a ``bump_epoch`` started inside the block lands
    only after it (the table commit made inside is never followed by a stale landing)."""
    a, b = StateStore(store_url), StateStore(store_url)
    a.ensure_job(JOB)
    a.save_cut(_cut())
    order: list[str] = []
    bumped = threading.Event()

    def bump() -> None:
        b.bump_epoch(JOB)
        order.append("bump")
        bumped.set()

    with a.epoch_held(JOB, 1):
        thread = threading.Thread(target=bump)
        thread.start()
        bumped.wait(2)  # give the bump every chance to overtake the block: it must not
        order.append("commit")
    thread.join(60)
    assert order == ["commit", "bump"]
    with (
        pytest.raises(StaleEpochError, match="expected epoch=2, found epoch=1"),
        a.epoch_held(JOB, 1),
    ):
        order.append("stale commit")
    assert order == ["commit", "bump"]
    with pytest.raises(RuntimeError, match="boom"), a.epoch_held(JOB, 2):
        raise RuntimeError("boom")  # the block's own error propagates unchanged
    b.bump_epoch(JOB)  # and the lock was released
    a.close()
    b.close()


def _owner(pid: int | None = None, host: str = "host-a") -> LeaseOwner:
    return LeaseOwner(uuid.uuid4().hex, os.getpid() if pid is None else pid, host)


def test_one_coordinator_holds_the_lease_and_others_are_told_who(store_url: str) -> None:
    store = StateStore(store_url)
    store.ensure_job(JOB)
    first, second = _owner(), _owner()
    lease = store.acquire_lease(JOB, first, 60)
    assert store.get_lease(JOB) == lease and lease.owner == first
    with pytest.raises(LeaseHeldError) as info:
        store.acquire_lease(JOB, second, 60)
    msg = str(info.value)
    assert f"another coordinator (pid={os.getpid()}, host=host-a, since=" in msg
    assert f"is running job={JOB}" in msg and "--takeover" in msg and "wait for it" in msg
    assert info.value.exit_code == ExitCode.ERROR
    assert store.renew_lease(JOB, first, 60) and not store.renew_lease(JOB, second, 60)
    assert store.acquire_lease(JOB, first, 60).owner == first  # re-entrant for its owner
    assert store.release_lease(JOB, first) and store.get_lease(JOB) is None
    assert store.acquire_lease(JOB, second, 60).owner == second  # free again
    store.close()


def test_an_expired_or_dead_lease_is_taken_and_takeover_steals_a_live_one(store_url: str) -> None:
    store = StateStore(store_url)
    store.ensure_job(JOB)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = _owner(pid=gone.pid)  # a process of this host that no longer exists
    store.acquire_lease(JOB, dead, 600)
    alive = _owner()
    assert store.acquire_lease(JOB, alive, 600).owner == alive
    remote = _owner(pid=gone.pid, host="elsewhere")  # cannot be probed: only expiry counts
    with pytest.raises(LeaseHeldError):
        store.acquire_lease(JOB, remote, 600)
    assert store.acquire_lease(JOB, remote, 600, takeover=True).owner == remote
    assert not store.renew_lease(JOB, alive, 600)  # the old holder learns it lost the lease
    store.acquire_lease(JOB, remote, 0.001)  # let it expire
    later = _owner(pid=os.getpid(), host="third-host")
    threading.Event().wait(0.05)
    assert store.acquire_lease(JOB, later, 60).owner == later
    store.close()


_V4_INDEXES = ("ix_slices_status", "ix_slices_position")


def _slice_indexes(conn: sa.Connection) -> set[str]:
    return {str(ix["name"]) for ix in sa.inspect(conn).get_indexes("slices")}


def test_a_version_1_store_is_migrated_to_version_4_with_leases_runs_and_slice_indexes(
    store_url: str, tmp_path: Path
) -> None:
    (tmp_path / "state").mkdir(exist_ok=True)
    engine = sa.create_engine(store_url)
    v1 = [tbl for tbl in schema.metadata.sorted_tables if tbl.name not in ("leases", "runs")]
    with engine.begin() as conn:
        schema.metadata.create_all(conn, tables=v1)
        for name in _V4_INDEXES:  # a version 1 store has no index on slices
            conn.execute(sa.text(f"DROP INDEX {name}"))
        conn.execute(schema.schema_version.insert().values(version=1, installed_at=_NOW))
        conn.execute(schema.jobs.insert().values(job_id=JOB, epoch=1, created_at=_NOW,
                                                 updated_at=_NOW))  # fmt: skip
    with pytest.raises(StateError, match=r"expected schema version 4, found \[1\].*upgrade"):
        StateStore(store_url, create=False)  # a read-only open never migrates
    store = StateStore(store_url)
    with engine.connect() as conn:
        assert sa.inspect(conn).has_table("leases") and sa.inspect(conn).has_table("runs")
        assert _slice_indexes(conn) >= set(_V4_INDEXES)
        assert list(conn.scalars(sa.select(schema.schema_version.c.version))) == [4]
    store.save_cut(_cut())  # the old job's data is kept and usable
    store.save_plan(JOB, 1, _plan(), "h" * 64)
    assert [r.slice_id for r in store.iter_slices(JOB, statuses=("pending",))] == [
        s.slice_id for s in _plan()
    ]
    assert store.acquire_lease(JOB, _owner(), 60).job_id == JOB
    store.record_run(JOB, "r1", "/tmp/r1.log", [])
    store.close()
    with engine.begin() as conn:
        conn.execute(schema.schema_version.update().values(version=5))
    with pytest.raises(StateError, match=r"expected schema version 4, found \[5\]"):
        StateStore(store_url)
    engine.dispose()


@dataclass
class _Statements:
    """Every SQL statement a store sends, with the number of rows each returned."""

    seen: list[tuple[str, int]]

    def on(self, store: StateStore) -> None:
        engine = store._engine

        @sa.event.listens_for(engine, "after_cursor_execute")
        def _after(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
            self.seen.append((" ".join(statement.split()), -1))

    def on_slices(self) -> list[str]:
        return [q for q, _ in self.seen if "FROM slices" in q and q.startswith("SELECT")]


def _big_plan(store: StateStore, n: int) -> list[Slice]:
    store.ensure_job(JOB)
    store.save_cut(_cut())
    plan = [
        Slice(f"k-p0-{i:09d}", Scope("kafka", (_r(0, 10 * i, 10 * i + 10),)), est_rows=10)
        for i in range(n)
    ]
    store.save_plan(JOB, 1, plan, "p" * 64)
    return plan


def test_iter_slices_pages_in_plan_order_by_status_never_reading_the_whole_plan(
    store: StateStore,
) -> None:
    plan = _big_plan(store, 11)
    for s in (plan[2], plan[9]):
        store.mark_running(JOB, s.slice_id, 1)
        store.mark_failed(JOB, s.slice_id, 1, "boom")
    store.mark_running(JOB, plan[5].slice_id, 1)
    store.mark_committed(JOB, plan[5].slice_id, 1, rows=10, token=None)
    sql = _Statements([])
    sql.on(store)
    pages = store.iter_slices(JOB, 1, page_size=4)
    assert next(pages).slice_id == plan[0].slice_id
    assert len(sql.on_slices()) == 1, "one page read for the first slice, not the plan"
    assert [r.slice_id for r in pages] == [s.slice_id for s in plan[1:]]
    queries = sql.on_slices()
    assert len(queries) == 3  # 4 + 4 + 3 slices: three keyset pages
    assert all("LIMIT" in q and "ORDER BY slices.position" in q for q in queries)
    sql.seen.clear()
    failed = list(store.iter_slices(JOB, statuses=("failed",), page_size=4))
    assert [r.slice_id for r in failed] == [plan[2].slice_id, plan[9].slice_id]
    assert all(r.status == "failed" and r.last_error == "boom" for r in failed)
    (query,) = sql.on_slices()
    assert "slices.status =" in query and "LIMIT" in query  # filtered in SQL, not in Python
    sql.seen.clear()
    todo = store.iter_slices(JOB, statuses=("pending", "running", "failed"), page_size=100)
    assert [r.slice_id for r in todo] == [s.slice_id for i, s in enumerate(plan) if i != 5]
    # one indexed keyset stream per status, merged in plan order: never an IN that must sort
    # every matching slice before the first page
    queries = sql.on_slices()
    assert len(queries) == 3 and all("slices.status =" in q and " IN " not in q for q in queries)
    assert list(store.iter_slices(JOB, statuses=())) == []


def test_slice_totals_are_one_aggregate_query(store: StateStore) -> None:
    plan = _big_plan(store, 6)
    for s in plan[:3]:
        store.mark_running(JOB, s.slice_id, 1)
        store.mark_committed(JOB, s.slice_id, 1, rows=7, token=None)
    store.mark_running(JOB, plan[3].slice_id, 1)
    store.mark_failed(JOB, plan[3].slice_id, 1, "boom")
    sql = _Statements([])
    sql.on(store)
    totals = store.slice_totals(JOB)
    (query,) = sql.on_slices()
    assert "GROUP BY slices.status" in query and "count(" in query.lower()
    assert set(totals) == {"committed", "failed", "pending"}
    done = totals["committed"]
    assert (done.slices, done.rows, done.est_rows, done.timed_rows) == (3, 21, 30, done.timed * 7)
    assert done.timed_s >= 0.0 and (totals["pending"].slices, totals["failed"].slices) == (2, 1)
    assert store.slice_counts(JOB) == {"committed": 3, "failed": 1, "pending": 2}


def test_plan_inputs_are_recorded_once_per_epoch(store: StateStore) -> None:
    _planned(store)
    assert store.plan_inputs(JOB, 1) is None
    store.save_plan_inputs(JOB, 1, "f" * 64, "h" * 64)
    store.save_plan_inputs(JOB, 1, "g" * 64, "h" * 64)  # the plan is immutable: first wins
    assert store.plan_inputs(JOB, 1) == ("f" * 64, "h" * 64)
    assert store.plan_inputs(JOB, 2) is None


def test_status_reads_use_the_slice_indexes(store: StateStore) -> None:
    _big_plan(store, 3)
    with store._tx() as conn:
        assert _slice_indexes(conn) >= set(_V4_INDEXES)
        if conn.dialect.name == "sqlite":  # PostgreSQL plans tiny tables as seq scans
            stmt = (
                sa.select(schema.slices)
                .where(schema.slices.c.job_id == JOB, schema.slices.c.epoch == 1,
                       schema.slices.c.status.in_(["failed"]), schema.slices.c.position > -1)
                .order_by(schema.slices.c.position)
                .limit(10)
            )  # fmt: skip
            compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
            plan = " ".join(
                str(r[-1]) for r in conn.execute(sa.text(f"EXPLAIN QUERY PLAN {compiled}"))
            )
            assert "ix_slices_status" in plan, plan


def test_detached_runs_are_recorded_given_a_pid_and_ended(store: StateStore) -> None:
    store.ensure_job(JOB)
    assert store.get_run(JOB) is None
    store.record_run(JOB, "aaa", "/logs/aaa.log", ["--output", "json"])
    first = store.get_run(JOB, "aaa")
    assert first is not None and first.state == "starting" and first.args == ("--output", "json")
    store.set_run_pid("aaa", os.getpid())
    running = store.get_run(JOB)
    assert running is not None and running.state == "running" and running.pid == os.getpid()
    store.end_run("aaa", 5)
    ended = store.get_run(JOB, "aaa")
    assert ended is not None and ended.state == "ended" and ended.exit_code == 5
    assert ended.ended_at is not None
    store.record_run(JOB, "bbb", "/logs/bbb.log", [])
    store.set_run_pid("bbb", 2**22 + 12345)  # no such process on this host
    died = store.get_run(JOB)
    assert died is not None and died.run_id == "bbb" and died.state == "died"
    assert [r.run_id for r in store.list_runs(JOB)] == ["bbb", "aaa"]
    with pytest.raises(StateError, match="expected a recorded detached run"):
        store.end_run("nope", 0)
