"""The seam under operator actions (issue 12 items 2 and 4), on real Kafka and real tables.

* A new cut and a restarted live consumer never write an offset twice, and a fresh state
  store is refused for a table this job already wrote (``cut --adopt`` takes it over).
* A stale coordinator's commit never lands after a new epoch: the epoch lock is held across
  the table commit.

Every outcome is read from the table itself (its rows' lineage and its commit tokens).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from backfill.sinks import open_sink
from coordinator.core.errors import StaleEpochError
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.core.values import CommitToken
from coordinator.run.pool import run_one
from coordinator.run.prepare import ensure_cut, ensure_plan
from coordinator.state.store import StateStore
from coordinator.testing.pytest_plugin import TopicFactory, write_job_file

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEAMLINE = str(Path(sys.executable).parent / "seamline")
FORMATS = ["iceberg", "lance"]


def write_job(root: Path, fmt: str, bootstrap: str, topic: str, state: str = "state.db") -> Path:
    """The job file of these tests, written by the plugin's job factory."""
    table: dict[str, Any] = {"partition_by": "none"}
    table |= {"identifier": "seam.events"} if fmt == "iceberg" else {"uri": str(root / "events.lance")}
    return write_job_file(
        root, bootstrap, topic, table_format=fmt, job_id="seam", table=table,
        backfill={"slice_records": 1000, "concurrency": 1, "max_attempts": 2},
        state={"url": f"sqlite:///{root / state}"},
    ).path  # fmt: skip


def produce(bootstrap: str, topic: str, start: int, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(start, start + n):
        doc = {"id": i, "ts": 1_704_067_200_000 + i * 1000}
        producer.produce(topic, json.dumps(doc).encode(), partition=0)
    assert producer.flush(30) == 0


def seamline(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEAMLINE, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def live_offset(job: JobSpec) -> int:
    """The table's live offset of partition 0 (-1: no table or no live commit yet)."""
    from pyiceberg.exceptions import NoSuchTableError

    try:
        offsets = open_sink(job).live_offsets()
    except (NoSuchTableError, OSError, ValueError):  # the live consumer creates the table
        return -1
    return int(offsets.get(0, -1))  # type: ignore[call-overload]


def run_live_until(job_file: Path, job: JobSpec, offset: int, cwd: Path) -> None:
    """``seamline live`` as a process until the table's live offset is ``offset``, then stop."""
    log = open(job.base_dir / "live.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [SEAMLINE, "--log-level", "INFO", "live", str(job_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
    )
    try:
        done = threading.Event()
        for _ in range(240):
            if live_offset(job) >= offset:
                done.set()
                break
            if proc.poll() is not None:
                break
            done.wait(0.5)
        assert done.is_set(), (job.base_dir / "live.log").read_text()[-3000:]
    finally:
        proc.terminate()
        assert proc.wait(60) == 0, (job.base_dir / "live.log").read_text()[-3000:]
    assert live_offset(job) == offset


def offsets_in_table(job: JobSpec) -> Counter[int]:
    data = open_sink(job).scan(columns=["_kafka_partition", "_kafka_offset"])
    return Counter(data["_kafka_offset"].to_pylist())


@pytest.mark.parametrize("fmt", FORMATS)
def test_new_cut_then_live_restart_never_writes_an_offset_twice(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory, fmt: str
) -> None:
    """The issue's repro: live at 150, new cut at 200, run, live again: 210 rows for 210."""
    topic = kafka_topic(1)
    job_file = write_job(tmp_path, fmt, kafka_bootstrap, topic)
    job = load_job(job_file)
    elsewhere = tmp_path / "elsewhere"  # a relative state URL is the job folder's
    elsewhere.mkdir()
    produce(kafka_bootstrap, topic, 0, 100)
    assert seamline("cut", str(job_file), cwd=elsewhere).returncode == 0
    produce(kafka_bootstrap, topic, 100, 50)
    run_live_until(job_file, job, 150, cwd=REPO)
    produce(kafka_bootstrap, topic, 150, 50)
    res = seamline("cut", str(job_file), "--new-cut", "--output", "json", cwd=elsewhere)
    assert res.returncode == 0, res.stderr
    cut = json.loads(res.stdout)
    assert cut["epoch"] == 2 and cut["partitions"][0]["hwm"] == 200
    res = seamline("run", str(job_file), "--output", "json", cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["reconciled"] is True
    produce(kafka_bootstrap, topic, 200, 10)
    run_live_until(job_file, job, 210, cwd=elsewhere)
    seen = offsets_in_table(job)
    assert sorted(seen) == list(range(210))  # every record, and only records that exist
    assert [o for o, n in seen.items() if n > 1] == []  # the old live restart wrote 150-199 again
    assert not (elsewhere / "state.db").exists() and (tmp_path / "state.db").exists()
    res = seamline("reconcile", str(job_file), "--output", "json", cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr

    # A fresh state store for this table is refused; --adopt takes it over at the live offset.
    other = write_job(tmp_path, fmt, kafka_bootstrap, topic, state="fresh.db")
    res = seamline("cut", str(other), cwd=REPO)
    assert res.returncode == 2 and "already written by this job" in res.stderr
    assert "--adopt" in res.stderr and "live offsets {0: 210}" in res.stderr
    assert not (tmp_path / "fresh.db").exists()
    produce(kafka_bootstrap, topic, 210, 5)  # the broker is at 215; the table's live offset 210
    res = seamline("cut", str(other), "--adopt", "--output", "json", cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["partitions"][0]["hwm"] >= 210


def _tokens(job: JobSpec, epoch: int) -> set[CommitToken]:
    commits: list[Any] = open_sink(job).commits()  # type: ignore[attr-defined]
    return {c.token for c in commits if c.token.epoch == epoch and c.token.side == "backfill"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_stale_coordinator_commit_never_lands_after_a_new_epoch(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    fmt: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Coordinator A (epoch 1) is inside its slice commit when coordinator B takes a new cut:
    every epoch-1 commit in the table must already be there when B's new epoch exists."""
    import backfill.sinks.common as common

    topic = kafka_topic(1)
    job = load_job(write_job(tmp_path, fmt, kafka_bootstrap, topic))
    produce(kafka_bootstrap, topic, 0, 20)
    cut = ensure_cut(job)
    slice_ = ensure_plan(job, cut, count=False).plan.slices[0]
    with StateStore(job.state_url()) as store:
        attempt = store.mark_running(job.job_id, slice_.slice_id, cut.epoch)
    token = CommitToken(job.job_id, slice_.slice_id, attempt, cut.epoch, "backfill",
                        slice_.scope.ranges)  # fmt: skip
    at_commit, release = threading.Event(), threading.Event()
    real = common.crash_point

    def pause(name: str) -> None:  # runs inside the sink's commit, right before the commit
        if name == "worker.before_commit" and not at_commit.is_set():
            at_commit.set()
            release.wait(120)
        real(name)

    monkeypatch.setattr(common, "crash_point", pause)
    outcome: list[Any] = []
    a = threading.Thread(
        target=lambda: outcome.append(
            run_one("backfill.executor:execute_slice", job, slice_, token)
        )
    )
    a.start()
    assert at_commit.wait(120), "coordinator A never reached its commit"
    after_bump: list[set[CommitToken]] = []

    def new_cut() -> None:
        with StateStore(job.state_url()) as store:
            store.bump_epoch(job.job_id)
        after_bump.append(_tokens(job, 1))  # what epoch 1 holds once epoch 2 exists

    b = threading.Thread(target=new_cut)
    b.start()
    b.join(3)  # old code: the bump lands inside A's gap; new code: it waits for the lock
    release.set()
    a.join(120)
    b.join(120)
    assert not a.is_alive() and not b.is_alive() and after_bump
    landed = _tokens(job, 1)
    assert landed <= after_bump[0], "a stale epoch-1 commit landed after epoch 2 was taken"
    assert outcome[0].error is None and landed == {token}  # A was first: it committed
    with pytest.raises(StaleEpochError):
        StateStore(job.state_url()).check_epoch(job.job_id, 1)
