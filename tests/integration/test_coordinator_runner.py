"""The runner with real worker processes, the real state store (SQLite) and a test executor."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coordinator.core.errors import ExitCode, StaleEpochError
from coordinator.core.jobspec import JobSpec, parse_job
from coordinator.core.values import Cut, Offset, PartitionCut, PartitionId
from coordinator.plan.planner import make_plan
from coordinator.run.runner import Runner, RunnerConfig, StopSignal
from coordinator.state.store import StateStore

pytestmark = pytest.mark.integration

EXECUTOR = "tests.integration.test_coordinator_executor:execute"


def make_job(tmp_path: Path) -> JobSpec:
    doc = {
        "job": {"id": "orders"},
        "stream": {"bootstrap": "127.0.0.1:39092", "topic": "orders"},
        "schema": {"fields": {"id": "int64", "ts": "timestamp_ms"}, "event_time": "ts"},
        "table": {"format": "lance", "uri": "t.lance"},
        "backfill": {"slice_records": 10, "concurrency": 2, "max_attempts": 3},
    }
    return parse_job(doc, base_dir=tmp_path, default_id="orders")


def planned_store(job: JobSpec, records: int = 60) -> tuple[StateStore, Cut]:
    store = StateStore(job.state_url())
    epoch = store.ensure_job(job.job_id)
    parts = (
        PartitionCut(PartitionId(0), Offset(0), Offset(records // 2)),
        PartitionCut(PartitionId(1), Offset(5), Offset(5 + records // 2)),
    )
    cut = store.save_cut(Cut(job.job_id, "orders", parts, datetime.now(UTC), epoch))
    plan = make_plan(cut, job.backfill.slice_records)
    store.save_plan(job.job_id, epoch, plan.slices, plan.plan_hash)
    return store, cut


@pytest.fixture
def exec_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "exec"
    d.mkdir()
    monkeypatch.setenv("SEAMLINE_TEST_EXEC_DIR", str(d))
    monkeypatch.setenv("SEAMLINE_TEST_EXEC_SLEEP", "0.05")
    return d


def commits(exec_dir: Path) -> Counter[str]:
    path = exec_dir / "commits.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split()[0] for line in lines)


def config() -> RunnerConfig:
    return RunnerConfig(EXECUTOR, concurrency=2, max_attempts=3, backoff_base_s=0.05)


def test_every_slice_commits_once(tmp_path: Path, exec_dir: Path) -> None:
    job = make_job(tmp_path)
    store, cut = planned_store(job)
    report = Runner(job, store, cut.epoch, config()).run()
    assert (report.exit_code, report.committed, report.total, report.rows) == (
        ExitCode.OK,
        6,
        6,
        60,
    )
    records = store.list_slices(job.job_id)
    assert {(r.status, r.attempts) for r in records} == {("committed", 1)}
    assert all(r.token is not None and r.token.epoch == cut.epoch for r in records)
    assert commits(exec_dir) == Counter({r.slice_id: 1 for r in records})
    again = Runner(job, store, cut.epoch, config()).run()  # nothing left to do
    assert again.committed == 6 and again.rows == 0 and commits(exec_dir).total() == 6


def test_failed_slices_are_retried_with_backoff(
    tmp_path: Path, exec_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job(tmp_path)
    store, cut = planned_store(job)
    monkeypatch.setenv(
        "SEAMLINE_TEST_EXEC_FAIL", "k-p0-000000000-000000010=2,k-p1-000000005-000000015=5"
    )
    monkeypatch.setenv("SEAMLINE_TEST_EXEC_FATAL", "k-p1-000000025-000000035")
    report = Runner(job, store, cut.epoch, config()).run()
    assert report.exit_code == ExitCode.PARTIAL
    assert report.failed == ("k-p1-000000005-000000015", "k-p1-000000025-000000035")
    by_id = {r.slice_id: r for r in store.list_slices(job.job_id)}
    retried = by_id["k-p0-000000000-000000010"]
    assert (retried.status, retried.attempts) == ("committed", 3)
    exhausted = by_id["k-p1-000000005-000000015"]
    assert (exhausted.status, exhausted.attempts) == ("failed", 3)
    assert exhausted.last_error is not None and "transient test failure" in exhausted.last_error
    fatal = by_id["k-p1-000000025-000000035"]
    assert (fatal.status, fatal.attempts) == ("failed", 1)  # terminal: not retried
    assert report.retries == 2 + 2
    monkeypatch.delenv("SEAMLINE_TEST_EXEC_FAIL")
    monkeypatch.delenv("SEAMLINE_TEST_EXEC_FATAL")
    resumed = Runner(job, store, cut.epoch, config()).run()  # only failed slices run again
    assert resumed.exit_code == ExitCode.OK
    assert commits(exec_dir) == Counter({sid: 1 for sid in by_id})


def test_stale_epoch_cannot_mark_slices(tmp_path: Path, exec_dir: Path) -> None:
    job = make_job(tmp_path)
    store, cut = planned_store(job)
    newer = StateStore(job.state_url())
    newer.bump_epoch(job.job_id)
    with pytest.raises(StaleEpochError, match="expected epoch=2, found epoch=1"):
        Runner(job, store, cut.epoch, config()).run()
    assert commits(exec_dir).total() == 0
    assert {r.status for r in store.list_slices(job.job_id, epoch=1)} == {"pending"}


def test_epoch_bumped_mid_run_stops_the_stale_runner(tmp_path: Path, exec_dir: Path) -> None:
    job = make_job(tmp_path)
    store, cut = planned_store(job)
    calls = 0

    def gate() -> float | None:
        nonlocal calls
        calls += 1
        if calls == 3:
            StateStore(job.state_url()).bump_epoch(job.job_id)
        return None

    with pytest.raises(StaleEpochError):
        Runner(job, store, cut.epoch, config(), lag_gate=gate).run()
    statuses = Counter(r.status for r in store.list_slices(job.job_id, epoch=1))
    # two slices were submitted before the bump; nothing was submitted or marked after it
    assert statuses["pending"] == 4 and statuses["committed"] + statuses["running"] == 2
    assert len((exec_dir / "executions.log").read_text().splitlines()) == 2


def test_lag_gate_pauses_are_recorded(tmp_path: Path, exec_dir: Path) -> None:
    job = make_job(tmp_path)
    store, cut = planned_store(job)
    answers = [0.05, 0.05]

    def gate() -> float | None:
        return answers.pop() if answers else None

    report = Runner(job, store, cut.epoch, config(), lag_gate=gate).run()
    assert report.exit_code == ExitCode.OK
    assert [p.seconds for p in store.list_pauses(job.job_id)] == [0.05, 0.05]


def test_cancel_finishes_in_flight_and_resume_completes(tmp_path: Path, exec_dir: Path) -> None:
    job = make_job(tmp_path)
    store, cut = planned_store(job)
    stop = StopSignal()
    calls = 0

    def gate() -> float | None:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.request()  # as SIGINT would, after two slices were submitted
        return None

    report = Runner(job, store, cut.epoch, config(), lag_gate=gate, stop=stop).run()
    assert report.cancelled and report.exit_code == ExitCode.CANCELLED
    statuses = Counter(r.status for r in store.list_slices(job.job_id))
    assert statuses["running"] == 0  # in-flight slices finished and were recorded
    assert statuses["committed"] >= 2 and statuses["pending"] == 6 - statuses["committed"]
    resumed = Runner(job, store, cut.epoch, config()).run()
    assert resumed.exit_code == ExitCode.OK
    assert set(commits(exec_dir).values()) == {1} and commits(exec_dir).total() == 6
