"""The coordinator's batch committer (``[backfill] committer = "coordinator"``) on fakes: the
runner with an in-thread pool whose "workers" stage slices, a real SQLite state store, and a
table that records its batch commits. Real tables: tests/integration/test_batch_committer.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from coordinator.core.errors import ConfigError, ExitCode
from coordinator.core.ports import CommitRecord, SliceResult
from coordinator.core.values import (
    CommitToken,
    Epoch,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
    Slice,
    SnapshotId,
)
from coordinator.run.committer import BatchCommitter, batch_slice_id
from coordinator.run.runner import Runner
from coordinator.state.store import StateStore
from tests.fakes.pool import InThreadPool
from tests.unit.test_runner import CONFIG, JOB, planned_store


class BatchTableFake:
    """Batch commits by token; ``fail_after`` raises once after that many commits landed
    (a coordinator dying right after its commit, before the state store is told)."""

    def __init__(self, fail_after: int | None = None, fail_before: bool = False) -> None:
        self.batches: dict[str, list[str]] = {}  # token slice id -> the slices' files
        self.fail_after = fail_after
        self.fail_before = fail_before  # die before the first commit lands

    def publish(
        self, scopes: Sequence[Scope], staged: Sequence[dict[str, Any]], token: CommitToken
    ) -> CommitRecord:
        assert token.slice_id not in self.batches, "a batch committed twice"
        if self.fail_before:
            self.fail_before = False
            raise KeyboardInterrupt("killed before the commit")
        assert len(scopes) == len(staged)
        self.batches[token.slice_id] = [f for d in staged for f in d["files"]]
        if self.fail_after is not None and len(self.batches) > self.fail_after:
            self.fail_after = None
            raise KeyboardInterrupt("killed after the commit")
        return self.find_commit(token.job_id, token.slice_id)  # type: ignore[return-value]

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None:
        if slice_id not in self.batches:
            return None
        n = list(self.batches).index(slice_id) + 1
        token = CommitToken(job_id, slice_id, 1, Epoch(1), "backfill")
        return CommitRecord(token, SnapshotId(100 + n), datetime.now(UTC))

    def files(self) -> list[str]:
        return [f for fs in self.batches.values() for f in fs]


def stage(_job: Any, slice_: Slice, token: CommitToken) -> SliceResult:
    """A worker that stages its slice: one file named after the slice and attempt."""
    files = [f"{slice_.slice_id}.a{token.attempt}.parquet"]
    return SliceResult(rows=slice_.est_rows, commit=None, staged={"files": files})


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    """A state store holding a cut of 2 x 30 records planned into 6 slices of 10."""
    return planned_store(tmp_path)


def committer(store: StateStore, table: BatchTableFake, max_slices: int) -> BatchCommitter:
    return BatchCommitter(JOB.job_id, Epoch(1), store, table, max_slices=max_slices,
                          max_wait_s=60.0, clock=lambda: 0.0)  # fmt: skip


def run(store: StateStore, c: BatchCommitter) -> Any:
    return Runner(JOB, store, Epoch(1), CONFIG, pool=InThreadPool(stage), committer=c).run()


def statuses(store: StateStore) -> dict[str, tuple[str, int | None]]:
    return {r.slice_id: (r.status, r.snapshot_id) for r in store.list_slices(JOB.job_id)}


def test_staged_slices_are_committed_by_the_coordinator_several_per_commit(
    store: StateStore,
) -> None:
    table = BatchTableFake()
    c = committer(store, table, max_slices=4)
    report = run(store, c)
    assert report.exit_code == ExitCode.OK and report.committed == 6
    assert [len(files) for files in table.batches.values()] == [4, 2]  # full batch, then flush
    assert sorted(table.files()) == sorted(f"{sid}.a1.parquet" for sid in statuses(store))
    assert set(statuses(store).values()) == {("committed", 101), ("committed", 102)}
    assert (c.commits, c.committed_slices) == (2, 6)
    for bid, files in table.batches.items():  # each token names exactly its batch's slices
        assert bid == batch_slice_id(1, [f.split(".a")[0] for f in files])


def test_an_aged_batch_is_committed_before_it_is_full(store: StateStore) -> None:
    table = BatchTableFake()
    now = [0.0]
    c = BatchCommitter(JOB.job_id, Epoch(1), store, table, max_slices=100, max_wait_s=1.0,
                       clock=lambda: now[0])  # fmt: skip
    first = store.list_slices(JOB.job_id)[0]
    store.mark_running(JOB.job_id, first.slice_id, 1)
    store.mark_staged(JOB.job_id, first.slice_id, 1, rows=10, staged={"files": ["x"]},
                      token=CommitToken(JOB.job_id, first.slice_id, 1, Epoch(1), "backfill"))
    c.add(first.slice_id, first.slice.scope, {"files": ["x"]})
    now[0] = 0.9
    assert not c.due() and c.commit_due() == 0 and not table.batches
    now[0] = 1.0
    assert c.due() and c.commit_due() == 1
    assert list(table.batches.values()) == [["x"]] and statuses(store)[first.slice_id][0] == (
        "committed"
    )


def test_a_batch_committed_before_a_crash_is_recorded_not_committed_again(
    store: StateStore,
) -> None:
    table = BatchTableFake(fail_after=0)  # the first batch lands, then the coordinator "dies"
    with pytest.raises(KeyboardInterrupt):
        run(store, committer(store, table, max_slices=4))
    assert len(table.batches) == 1
    first = next(iter(table.batches))
    before = [s for s, _ in statuses(store).values()]
    assert before.count("staged") == 4  # the batch's slices: the state store was not told
    report = run(store, committer(store, table, max_slices=4))  # the next run
    assert report.exit_code == ExitCode.OK
    after = statuses(store)
    assert {s for s, _ in after.values()} == {"committed"}
    # the four slices of the landed batch are recorded at its snapshot; the other two are
    # committed in one new batch; no file is committed twice
    assert sum(snap == 101 for _, snap in after.values()) == 4
    assert len(table.batches) == 2 and first in table.batches
    assert len(table.files()) == len(set(table.files())) == 6


def test_the_coordinator_committer_is_refused_with_merge_and_with_atomic_publish() -> None:
    from tests.unit.test_publish_config import job

    spec = job({"committer": "coordinator", "commit_batch_slices": 8})
    assert (spec.backfill.committer, spec.backfill.commit_batch_slices) == ("coordinator", 8)
    assert job({}).backfill.committer == "worker"
    with pytest.raises(ConfigError, match=r'key=backfill\.committer: .* found mode = "merge"'):
        job({"committer": "coordinator", "mode": "merge"},
            {"format": "lance", "uri": "t.lance", "key": ["id"]})  # fmt: skip
    with pytest.raises(ConfigError, match=r'key=backfill\.committer: .* found mode = "append"'):
        job({"committer": "coordinator", "mode": "append"})
    with pytest.raises(ConfigError, match=r'key=backfill\.committer: .* publish = "atomic"'):
        job({"committer": "coordinator", "publish": "atomic"})
    with pytest.raises(ConfigError, match=r"backfill\.commit_batch_slices"):
        job({"committer": "coordinator", "commit_batch_slices": 0})


def test_a_batch_committed_slice_is_not_shown_as_an_atomic_publish() -> None:
    from coordinator.run.publish import publish_state
    from coordinator.state.store import SliceRecord

    rng = Scope("kafka", (OffsetRange(PartitionId(0), Offset(0), Offset(5)),))
    rec = SliceRecord(Slice("a", rng), Epoch(1), "committed", 1, snapshot_id=SnapshotId(3),
                      staged={"files": [], "batch": "batch.e1.00"})  # fmt: skip
    assert publish_state([rec]) is None


def test_a_batch_not_in_the_table_after_a_crash_is_written_afresh_never_from_its_old_files(
    store: StateStore,
) -> None:
    """Killed after the batch was recorded and before its commit landed (or its token expired
    with its snapshot): its slices run again with fresh files; the old ones are never used."""
    table = BatchTableFake(fail_before=True)
    with pytest.raises(KeyboardInterrupt):
        run(store, committer(store, table, max_slices=4))
    assert not table.batches
    stale = [r for r in store.list_slices(JOB.job_id) if r.status == "staged"]
    assert len(stale) == 4 and all((r.staged or {}).get("batch") for r in stale)
    report = run(store, committer(store, table, max_slices=4))
    assert report.exit_code == ExitCode.OK
    assert {s for s, _ in statuses(store).values()} == {"committed"}
    files = table.files()
    assert len(files) == len(set(files)) == 6
    for r in stale:  # written again (attempt 2), the attempt-1 files never committed
        assert f"{r.slice_id}.a2.parquet" in files and f"{r.slice_id}.a1.parquet" not in files
