"""The runner on fakes: an in-thread worker pool and a real SQLite state store in a tmp dir.

These cover the runner's own decisions (retry or not, backoff, worker deaths, resume, cancel)
without processes, Kafka or a table; tests/integration/test_coordinator_runner.py and
test_coordinator_resume.py run the same paths with real worker processes.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from coordinator.core.errors import (
    CommitConflictError,
    ConfigError,
    ExitCode,
    SourceDataLossError,
    StaleEpochError,
)
from coordinator.core.ports import CommitRecord, SliceResult
from coordinator.core.values import (
    CommitToken,
    Cut,
    Epoch,
    Offset,
    OffsetRange,
    PartitionCut,
    PartitionId,
    Scope,
    Slice,
    SnapshotId,
)
from coordinator.plan.planner import make_plan
from coordinator.run.runner import Runner, RunnerConfig, StopSignal
from coordinator.state.store import StateStore
from tests.fakes.pool import InThreadPool, attempts_of

JOB = SimpleNamespace(job_id="orders")
CONFIG = RunnerConfig("unused:executor", concurrency=2, max_attempts=3, backoff_base_s=0.001,
                      backoff_max_s=0.002, jitter="none")  # fmt: skip


class FakeTable:
    """Commits by slice id, idempotent like the real executor (a token in the table is a no-op)."""

    def __init__(self, failures: dict[str, list[Exception]] | None = None) -> None:
        self.commits: Counter[str] = Counter()
        self.executions: list[tuple[str, int]] = []
        self.failures = failures or {}

    def execute(self, job: Any, slice_: Slice, token: CommitToken) -> SliceResult:
        self.executions.append((slice_.slice_id, token.attempt))
        pending = self.failures.get(slice_.slice_id)
        if pending:
            raise pending.pop(0)
        if self.commits[slice_.slice_id]:
            return SliceResult(rows=slice_.est_rows, commit=None, already_committed=True)
        self.commits[slice_.slice_id] += 1
        record = CommitRecord(token, SnapshotId(len(self.commits)), datetime.now(UTC))
        return SliceResult(rows=slice_.est_rows, commit=record)


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    """A state store holding a cut of 2 x 30 records planned into 6 slices of 10."""
    return planned_store(tmp_path)


def planned_store(tmp_path: Path) -> StateStore:
    """A state store holding a cut of 2 x 30 records planned into 6 slices of 10."""
    st = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    epoch = st.ensure_job(JOB.job_id)
    parts = (
        PartitionCut(PartitionId(0), Offset(0), Offset(30)),
        PartitionCut(PartitionId(1), Offset(5), Offset(35)),
    )
    cut = st.save_cut(Cut(JOB.job_id, "orders", parts, datetime.now(UTC), epoch))
    plan = make_plan(cut, 10)
    st.save_plan(JOB.job_id, epoch, plan.slices, plan.plan_hash)
    return st


def run(store: StateStore, pool: InThreadPool, **kwargs: Any) -> Any:
    return Runner(JOB, store, Epoch(1), CONFIG, pool=pool, **kwargs).run()


def by_id(store: StateStore) -> dict[str, Any]:
    return {r.slice_id: r for r in store.list_slices(JOB.job_id)}


def test_every_slice_commits_once_and_a_rerun_does_nothing(store: StateStore) -> None:
    table = FakeTable()
    pool = InThreadPool(table.execute)
    report = run(store, pool)
    assert (report.exit_code, report.committed, report.total, report.rows) == (
        ExitCode.OK,
        6,
        6,
        60,
    )
    assert {(r.status, r.attempts) for r in by_id(store).values()} == {("committed", 1)}
    assert set(table.commits.values()) == {1} and len(table.commits) == 6
    assert pool.shut_down == "wait"
    again = InThreadPool(table.execute)
    assert run(store, again).rows == 0 and again.submitted == []


def test_transient_errors_are_retried_and_terminal_ones_are_not(store: StateStore) -> None:
    ids = sorted(by_id(store))
    timeout = KafkaException(KafkaError(KafkaError._TIMED_OUT))
    table = FakeTable({
        ids[0]: [CommitConflictError("conflict"), timeout],  # transient twice, then commits
        ids[1]: [ConfigError("bad transform")],  # terminal
        ids[2]: [SourceDataLossError("retention")],  # terminal
        ids[3]: [OSError("disk"), OSError("disk"), OSError("disk")],  # exhausts 3 attempts
        ids[4]: [TypeError("bug in user code")],  # a programming error: terminal
    })  # fmt: skip
    pool = InThreadPool(table.execute)
    report = run(store, pool)
    assert report.exit_code == ExitCode.PARTIAL
    assert report.failed == tuple(sorted(ids[1:5]))
    assert attempts_of(pool) == {ids[0]: 3, ids[1]: 1, ids[2]: 1, ids[3]: 3, ids[4]: 1, ids[5]: 1}
    assert report.retries == 2 + 2
    recs = by_id(store)
    assert (recs[ids[0]].status, recs[ids[0]].attempts) == ("committed", 3)
    assert recs[ids[1]].last_error == "ConfigError: bad transform"
    assert (recs[ids[3]].status, recs[ids[3]].attempts) == ("failed", 3)


def test_a_dead_worker_is_a_retried_slice_not_a_failed_run(store: StateStore) -> None:
    ids = sorted(by_id(store))
    table = FakeTable()
    pool = InThreadPool(table.execute, die={(ids[2], 1), (ids[4], 1), (ids[4], 2)})
    report = run(store, pool)
    assert report.exit_code == ExitCode.OK and report.committed == 6
    assert report.worker_deaths == 3 and report.retries == 3
    assert attempts_of(pool, {ids[2], ids[4]}) == {ids[2]: 2, ids[4]: 3}
    assert set(table.commits.values()) == {1} and len(table.commits) == 6
    assert by_id(store)[ids[4]].attempts == 3


def test_cancel_then_resume_commits_every_slice_exactly_once(store: StateStore) -> None:
    table = FakeTable()
    stop = StopSignal()
    calls = 0

    def gate() -> float | None:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.request()  # after two submissions, as SIGINT would
        return None

    first = run(store, InThreadPool(table.execute), lag_gate=gate, stop=stop)
    assert first.cancelled and first.exit_code == ExitCode.CANCELLED
    statuses = Counter(r.status for r in by_id(store).values())
    assert statuses["running"] == 0  # in-flight slices finished and were recorded
    assert statuses["committed"] == len(table.commits) >= 2
    assert statuses["pending"] == 6 - statuses["committed"]
    resumed = run(store, InThreadPool(table.execute))
    assert resumed.exit_code == ExitCode.OK and resumed.committed == 6
    assert set(table.commits.values()) == {1} and len(table.commits) == 6


def test_abandon_terminates_the_pool_and_leaves_slices_running(store: StateStore) -> None:
    table = FakeTable()
    stop = StopSignal()
    ids = sorted(by_id(store))
    pool = InThreadPool(table.execute, hold={ids[0]})  # a slice that takes forever

    def gate() -> float | None:
        if len(pool.submitted) == 3:
            stop.request()
            stop.request()  # the second signal abandons in-flight slices
        return None

    report = run(store, pool, lag_gate=gate, stop=stop)
    assert report.cancelled and pool.shut_down == "terminate"
    statuses = Counter(r.status for r in by_id(store).values())
    assert by_id(store)[ids[0]].status == "running" and ids[0] not in table.commits
    assert statuses == Counter({"running": 1, "committed": 2, "pending": 3})
    resumed = run(store, InThreadPool(table.execute))  # `running` slices are run again
    assert resumed.exit_code == ExitCode.OK and len(table.commits) == 6


def test_a_stale_epoch_stops_the_runner_before_anything_runs(store: StateStore) -> None:
    store.bump_epoch(JOB.job_id)
    pool = InThreadPool(FakeTable().execute)
    with pytest.raises(StaleEpochError):
        run(store, pool)
    assert pool.submitted == [] and pool.shut_down == "wait"


def test_runner_config_validates_its_retry_settings() -> None:
    with pytest.raises(ValueError, match="expected attempts >= 1, found attempts=0"):
        RunnerConfig("m:f", max_attempts=0)
    with pytest.raises(ValueError, match="expected concurrency >= 1"):
        RunnerConfig("m:f", concurrency=0)
    assert RunnerConfig("m:f", max_attempts=4).retry.attempts == 4


def test_reprocess_slices_run_through_the_same_runner_and_policy(tmp_path: Path) -> None:
    from coordinator.core.errors import SourceError
    from coordinator.core.retry import transient
    from coordinator.run.reprocess import ReprocessLedger
    from coordinator.state.reprocess import ReprocessStore

    store = ReprocessStore(f"sqlite:///{tmp_path / 'state.db'}")
    epoch = store.ensure_job(JOB.job_id)
    slices = [
        Slice(f"r-x-k-p0-{a:09d}-{a + 5:09d}", Scope("kafka", (rng(a),)), est_rows=5)
        for a in (0, 5, 10)
    ]
    store.save_run("x", JOB.job_id, epoch, {}, slices)
    timeout = transient(SourceError("topic=t partition=0: no progress for 30s"))
    table = FakeTable({slices[1].slice_id: [timeout], slices[2].slice_id: [ConfigError("bad")] * 2})
    ledger = ReprocessLedger(store, "x")
    report = Runner(JOB, ledger, epoch, CONFIG, pool=InThreadPool(table.execute)).run()
    assert (report.committed, report.failed, report.retries) == (2, (slices[2].slice_id,), 1)
    got = {r.slice.slice_id: (r.status, r.attempts) for r in store.run_slices("x")}
    assert got == {
        slices[0].slice_id: ("committed", 1),
        slices[1].slice_id: ("committed", 2),  # a Kafka timeout is retried by reprocess too
        slices[2].slice_id: ("failed", 1),
    }
    again = InThreadPool(table.execute)  # a re-run only runs the failed slice
    Runner(JOB, ledger, epoch, CONFIG, pool=again).run()
    assert [t.slice_.slice_id for t in again.submitted] == [slices[2].slice_id]
    assert store.run_slices("x")[2].status == "failed"
    store.bump_epoch(JOB.job_id)  # a newer cut makes the reprocess run stale
    with pytest.raises(StaleEpochError):
        Runner(JOB, ledger, epoch, CONFIG, pool=InThreadPool(table.execute)).run()


def rng(a: int) -> OffsetRange:
    return OffsetRange(PartitionId(0), Offset(a), Offset(a + 5))


def _config(**kw: Any) -> RunnerConfig:
    from dataclasses import replace

    return replace(CONFIG, **kw)


def test_only_and_limit_run_a_subset_and_leave_the_plan_unchanged(store: StateStore) -> None:
    ids = sorted(by_id(store))  # k-p0-... (3 slices) then k-p1-... (3 slices)
    table = FakeTable()
    pool = InThreadPool(table.execute)
    report = Runner(JOB, store, Epoch(1), _config(only=("k-p1-*",), limit=2), pool=pool).run()
    assert report.exit_code == ExitCode.PARTIAL
    assert sorted(table.commits) == ids[3:5]
    assert report.committed == 2 and report.remaining == 4
    assert report.not_selected == (ids[0], ids[1], ids[2], ids[5])
    recs = by_id(store)
    assert len(recs) == 6  # the stored plan is the same six slices
    assert {s for s, r in recs.items() if r.status == "committed"} == set(ids[3:5])
    rest = Runner(JOB, store, Epoch(1), CONFIG, pool=InThreadPool(table.execute)).run()
    assert rest.exit_code == ExitCode.OK and rest.committed == 6 and rest.not_selected == ()
    assert set(table.commits.values()) == {1} and len(table.commits) == 6


def test_an_only_glob_matching_no_slice_is_a_config_error(store: StateStore) -> None:
    table = FakeTable()
    with pytest.raises(ConfigError, match=r"k-p9-\*.*found no match among 6 slices"):
        Runner(
            JOB, store, Epoch(1), _config(only=("k-p9-*",)), pool=InThreadPool(table.execute)
        ).run()
    assert table.executions == []
    with pytest.raises(ConfigError, match="expected --limit >= 1"):
        _config(limit=0)


def test_a_failed_attempt_the_run_retries_is_stored_as_retrying(store: StateStore) -> None:
    """``status`` tells a slice waiting for its retry from one that failed for good."""
    ids = sorted(by_id(store))
    seen: list[str | None] = []
    table = FakeTable({ids[0]: [CommitConflictError("conflict")],
                       ids[1]: [OSError("disk")] * 3})  # fmt: skip
    plain = table.execute

    def execute(job: Any, slice_: Slice, token: CommitToken) -> SliceResult:
        if slice_.slice_id == ids[0] and token.attempt == 2:  # the error of attempt 1, as stored
            seen.append(by_id(store)[ids[0]].last_error)
        return plain(job, slice_, token)

    report = run(store, InThreadPool(execute))
    assert seen == ["retrying after attempt 1 of 3: CommitConflictError: conflict"]
    assert report.failed == (ids[1],)
    assert by_id(store)[ids[1]].last_error == "OSError: disk"  # the last attempt: not retried
