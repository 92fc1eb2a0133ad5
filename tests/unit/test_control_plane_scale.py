"""The control plane reads a big plan in bounded pages (issue 16 item 5): the runner's queue
and ``seamline status`` never load every slice, and the queue is O(1) per submission.

Real SQLite state stores in a tmp dir; what is asserted is what was read (statements and slice
records pulled), never a timing (timings: ``bench/control_plane.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from coordinator.core.ports import SliceTask
from coordinator.core.values import (
    Cut,
    Epoch,
    Offset,
    OffsetRange,
    PartitionCut,
    PartitionId,
    Scope,
    Slice,
    SliceStatus,
)
from coordinator.run.queue import READ_AHEAD, SliceQueue
from coordinator.run.runner import Runner, RunnerConfig, StopSignal
from coordinator.run.status import estimate_seconds, slice_status
from coordinator.state.store import SliceRecord, StateStore

JOB = "orders"
N = READ_AHEAD * 3 + 7


def _slice(i: int) -> Slice:
    rng = OffsetRange(PartitionId(0), Offset(10 * i), Offset(10 * i + 10))
    return Slice(f"k-p0-{i:09d}", Scope("kafka", (rng,)), est_rows=10)


def _big_store(path: Path) -> StateStore:
    """A store whose plan has N slices: 2 failed, 5 committed, the rest pending."""
    store = StateStore(f"sqlite:///{path}")
    store.ensure_job(JOB)
    part = PartitionCut(PartitionId(0), Offset(0), Offset(10 * N))
    store.save_cut(Cut(JOB, "orders", (part,), datetime.now(UTC), Epoch(1)))
    store.save_plan(JOB, 1, [_slice(i) for i in range(N)], "b" * 64)
    for i in (3, N - 1):
        store.mark_running(JOB, _slice(i).slice_id, 1)
        store.mark_failed(JOB, _slice(i).slice_id, 1, f"boom {i}")
    for i in range(10, 15):
        store.mark_running(JOB, _slice(i).slice_id, 1)
        store.mark_committed(JOB, _slice(i).slice_id, 1, rows=10, token=None)
    return store


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StateStore]:
    """The N-slice store, shared by the read-only tests."""
    store = _big_store(tmp_path_factory.mktemp("big") / "state.db")
    yield store
    store.close()


class Counted:
    """The store, counting the slice records the runner pulls; ``list_slices`` is refused."""

    def __init__(self, store: StateStore) -> None:
        self.store, self.pulled = store, 0

    def iter_slices(self, *args: Any, **kwargs: Any) -> Iterator[SliceRecord]:
        for r in self.store.iter_slices(*args, **kwargs):
            self.pulled += 1
            yield r

    def list_slices(self, *_args: Any, **_kwargs: Any) -> list[SliceRecord]:
        raise AssertionError("the runner must page the plan, not list it")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class FirstSubmitPool:
    """Records the first submitted slice, then abandons the run (nothing executes)."""

    capacity = 1

    def __init__(self, stop: StopSignal) -> None:
        self.stop, self.tasks = stop, list[SliceTask]()

    def submit(self, task: SliceTask) -> None:
        self.tasks.append(task)
        self.stop.request()
        self.stop.request()

    def completed(self, timeout: float) -> list[Any]:
        return []

    def in_flight(self) -> int:
        return 0

    def shutdown(self, *, terminate: bool = False) -> None:
        return None


def test_the_runner_starts_after_one_page_of_the_plan_without_listing_it(
    tmp_path: Path,
) -> None:
    counted, stop = Counted(_big_store(tmp_path / "state.db")), StopSignal()
    pool = FirstSubmitPool(stop)
    config = RunnerConfig("unused:executor", concurrency=1)
    report = Runner(SimpleNamespace(job_id=JOB), counted, Epoch(1), config, stop=stop,
                    pool=pool).run()  # fmt: skip
    assert [t.slice_.slice_id for t in pool.tasks] == [_slice(0).slice_id]
    assert counted.pulled <= READ_AHEAD < N  # one read-ahead, not the plan
    assert report.total == N and report.committed == 5 and report.cancelled
    assert report.remaining == N - 5  # exact without reading the rest
    counted.store.close()


def test_the_queue_feeds_lazily_and_orders_retries_by_time() -> None:
    pulled: list[int] = []

    def source() -> Iterator[Slice]:
        for i in range(10_000):
            pulled.append(i)
            yield _slice(i)

    q = SliceQueue(source(), read_ahead=4)
    first = q.pop(0.0)
    assert first is not None and first.slice_id == _slice(0).slice_id and len(pulled) == 4
    q.retry(5.0, _slice(900))
    q.retry(2.0, _slice(901))
    assert [q.pop(1.0).slice_id for _ in range(3)] == [_slice(i).slice_id for i in (1, 2, 3)]  # type: ignore[union-attr]
    assert len(pulled) == 4  # nothing read beyond what ran
    popped = q.pop(3.0)  # a due retry goes before the next first-time slice
    assert popped is not None and popped.slice_id == _slice(901).slice_id
    rest = [q.pop(3.0) for _ in range(10_000 - 4)]
    assert all(s is not None for s in rest) and q.pop(3.0) is None
    assert q.soonest() == 5.0
    last = q.pop(5.0)
    assert last is not None and last.slice_id == _slice(900).slice_id and q.soonest() is None


def _selects(store: StateStore) -> list[str]:
    seen: list[str] = []

    @sa.event.listens_for(store._engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM slices" in statement and statement.lstrip().startswith("SELECT"):
            seen.append(" ".join(statement.split()))

    return seen


def test_status_reads_counts_and_one_bounded_page_problems_first(big: StateStore) -> None:
    seen = _selects(big)
    doc = slice_status(big, JOB, 1, "summary", limit=20)
    assert doc["counts"] == {"failed": 2, "committed": 5, "pending": N - 7}
    assert doc["slices_total"] == N and doc["slices_more"] == N - 20
    assert doc["remaining_count"] == N - 5 and len(doc["remaining"]) == 20
    listed = [(s["slice_id"], s["status"]) for s in doc["slices"]]
    assert listed[:2] == [(_slice(3).slice_id, "failed"), (_slice(N - 1).slice_id, "failed")]
    assert len(listed) == 20 and {st for _, st in listed[2:]} == {"pending"}
    assert doc["publish"] is None
    assert seen and all("GROUP BY" in q or "LIMIT" in q for q in seen), seen
    assert sum("GROUP BY" in q for q in seen) == 1


def test_status_failed_lists_every_failed_slice_and_all_lists_the_plan(big: StateStore) -> None:
    failed = slice_status(big, JOB, 1, "failed")
    assert [s["last_error"] for s in failed["slices"]] == ["boom 3", f"boom {N - 1}"]
    every = slice_status(big, JOB, 1, "all")
    assert [s["slice_id"] for s in every["slices"]] == [_slice(i).slice_id for i in range(N)]
    assert len(every["remaining"]) == N - 5 and every["slices_more"] == 0


def test_the_estimate_comes_from_the_status_totals(big: StateStore) -> None:
    summary = slice_status(big, JOB, 1)["summary"]
    statuses: Sequence[SliceStatus] = ("committed",)
    done = summary[statuses[0]]
    assert done["slices"] == 5 and done["rows"] == 50 and done["est_rows"] == 50
    left = estimate_seconds(summary, concurrency=1)
    if done["timed"]:  # durations are real (sub-second) here: the pace is rows per second
        assert left == pytest.approx((N - 5) * 10 / (done["timed_rows"] / done["timed_s"]))
    else:
        assert left is None
    assert estimate_seconds({"committed": done}, 1) == 0.0


def test_no_cut_means_no_slices(tmp_path: Path) -> None:
    with StateStore(f"sqlite:///{tmp_path / 's.db'}") as store:
        doc = slice_status(store, JOB, None)
    assert (doc["counts"], doc["slices"], doc["remaining_count"]) == ({}, [], 0)


def _job(root: Path, slice_records: int) -> Any:
    from coordinator.core.jobspec import parse_job

    doc = {
        "job": {"id": "orders"},
        "stream": {"bootstrap": "127.0.0.1:1", "topic": "orders"},
        "schema": {"fields": {"order_id": "int64", "ts": "timestamp_ms"}, "event_time": "ts"},
        "table": {"format": "lance", "uri": str(root / "orders.lance")},
        "backfill": {"slice_records": slice_records},
    }
    return parse_job(doc, base_dir=root, default_id="orders")


def test_the_drift_check_compares_the_recorded_inputs_instead_of_planning_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator.run import prepare

    job = _job(tmp_path, 100)
    part = PartitionCut(PartitionId(0), Offset(0), Offset(10_000))
    with StateStore(job.state_url()) as store:
        store.ensure_job(JOB)
        cut = store.save_cut(Cut(JOB, "orders", (part,), datetime.now(UTC), Epoch(1)))
    view = prepare.ensure_plan(job, cut, count=False)
    assert len(view.plan.slices) == 100
    with StateStore(job.state_url()) as store:
        recorded = store.plan_inputs(JOB, 1)
    assert recorded is not None and recorded[1] == view.plan.plan_hash

    planned: list[int] = []
    from coordinator.plan.planner import make_plan as real

    def counting(*args: Any, **kwargs: Any) -> Any:
        planned.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare, "make_plan", counting)
    assert prepare.plan_drift(job, "job.toml") is None
    assert planned == [], "unchanged inputs must not be planned again"
    changed = _job(tmp_path, 50)  # a different slice size: a different plan
    message = prepare.plan_drift(changed, "job.toml")
    assert planned == [1] and message is not None and "--new-cut" in message
    stored = prepare.stored_cut(changed)
    assert stored is not None  # the stored plan stays (immutable), read without planning:
    assert prepare.ensure_plan_stored(changed, stored).plan_hash == view.plan.plan_hash
    assert planned == [1]


def test_status_shows_a_slice_awaiting_its_retry_as_retrying_while_its_run_holds_the_job(
    tmp_path: Path,
) -> None:
    from coordinator.run.runner import retry_note
    from coordinator.state.lease import LeaseOwner

    with _big_store(tmp_path / "state.db") as store:
        waiting = _slice(4).slice_id
        store.mark_running(JOB, waiting, 1)
        store.mark_failed(JOB, waiting, 1, retry_note(1, 5) + "CommitConflictError: conflict")
        owner = LeaseOwner.this_process()
        store.acquire_lease(JOB, owner, ttl_s=60)
        doc = slice_status(store, JOB, 1, "failed")
        assert {s["slice_id"]: s["status"] for s in doc["slices"]} == {
            _slice(3).slice_id: "failed",  # failed for good: no retry note
            waiting: "retrying",
            _slice(N - 1).slice_id: "failed",
        }
        assert doc["running"]["pid"] == owner.pid
        store.release_lease(JOB, owner)  # the run ended (or died): nothing retries it now
        doc = slice_status(store, JOB, 1, "failed")
        assert {s["status"] for s in doc["slices"]} == {"failed"} and doc["running"] is None


def test_staged_slices_of_a_per_slice_job_are_not_shown_as_a_pending_publish(
    tmp_path: Path,
) -> None:
    """With ``committer = "coordinator"`` a slice is staged until its batch commit: no
    write-audit-publish state is shown for it."""
    from coordinator.core.values import CommitToken

    with _big_store(tmp_path / "state.db") as store:
        sid = _slice(20).slice_id
        store.mark_running(JOB, sid, 1)
        store.mark_staged(JOB, sid, 1, rows=10, staged={"files": []},
                          token=CommitToken(JOB, sid, 1, Epoch(1), "backfill"))  # fmt: skip
        assert slice_status(store, JOB, 1, atomic=False)["publish"] is None
        staged = slice_status(store, JOB, 1, atomic=True)["publish"]
        assert staged == {"state": "staged", "staged": 1, "snapshot_id": None}
