"""Write-audit-publish (``[backfill] publish = "atomic"``) on real Kafka and real Iceberg and
Lance tables, with a live consumer committing throughout.

A reader polling the table during the run sees 0 backfill rows until the ONE publish commit and
all of them after it; the coordinator killed just before the publish (crash point
``run.before_publish``) leaves everything staged and invisible, and a re-run publishes exactly
once (read back from the table). A staged history that does not reconcile with the source, or
a failed assertion, blocks the publish: exit 1, nothing visible.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest

from backfill.sinks import open_sink
from coordinator.core import lineage
from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import (
    REPO,
    SEAMLINE,
    LiveProducer,
    job_path,
    json_out,
    live_consumer,
    load_history,
    seamline,
    table_rows,
    take_cut,
    wait_until,
    write_job,
)

pytestmark = pytest.mark.integration


def atomic_job(root: Path, fmt: str, bootstrap: str, topic: str, extra: str = "") -> JobSpec:
    job = write_job(root, fmt, bootstrap, topic, slice_records=20)
    path = Path(job_path(job))
    text = path.read_text().replace("[backfill]\n", f'[backfill]\npublish = "atomic"\n{extra}')
    path.write_text(text)
    return load_job(path)


def run_crashing(job: JobSpec, point: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEAMLINE_CRASH_AT": point}
    return subprocess.run(
        [SEAMLINE, "run", job_path(job), "--output", "json"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )  # fmt: skip


def sides(job: JobSpec) -> tuple[int, int]:
    """(backfill rows, live rows) in the table now (0, 0 before it exists)."""
    try:
        col = open_sink(job).scan(columns=[lineage.SIDE])[lineage.SIDE]
    except Exception:  # the live consumer has not created the table yet
        return 0, 0
    backfill = pc.sum(pc.equal(col, "backfill")).as_py() or 0
    return backfill, len(col) - backfill


class Poller(threading.Thread):
    """Reads the table every 0.1 s, recording (backfill rows, live rows) each time."""

    def __init__(self, job: JobSpec) -> None:
        super().__init__(daemon=True)
        self.job, self.seen = job, list[tuple[int, int]]()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(0.1):
                self.seen.append(sides(self.job))
        except BaseException as exc:
            self.error = exc

    def finish(self) -> list[tuple[int, int]]:
        self.stop.set()
        self.join(30)
        assert self.error is None, self.error
        return self.seen


def live_log_tail(job: JobSpec, lines: int = 40) -> str:
    """The live consumer's last log lines (for a failure message)."""
    path = job.base_dir / "live.log"
    text = path.read_text(errors="replace") if path.exists() else "(no live.log)"
    return "the live log ends:\n" + "\n".join(text.splitlines()[-lines:])


def status(job: JobSpec) -> dict[str, Any]:
    res = seamline("status", job_path(job), "--output", "json")
    assert res.returncode == 0, res.stderr
    return json_out(res)


def publish_commits(job: JobSpec) -> list[Any]:
    sink: Any = open_sink(job)
    return [c for c in sink.commits() if c.token.slice_id.startswith("publish.")]


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_readers_see_no_backfill_row_until_the_one_publish_and_a_kill_before_it_is_exact(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(tmp_path, kafka_bootstrap, topic, archive_n=30, topic_n=60)
    job = atomic_job(tmp_path, fmt, kafka_bootstrap, topic)
    take_cut(job)
    producer = LiveProducer(kafka_bootstrap, topic, first_id=100_000, per_second=12)
    producer.start()
    with live_consumer(job) as live:
        wait_until(lambda: sides(job)[1] > 0, 60, "the live consumer's first commit")
        poller = Poller(job)
        poller.start()

        crashed = run_crashing(job, "run.before_publish")
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
        doc = status(job)
        assert doc["publish"]["state"] == "staged" and doc["remaining"] == []
        assert doc["counts"] == {"staged": doc["publish"]["staged"]}

        res = seamline("run", job_path(job), "--output", "json")
        assert res.returncode == ExitCode.OK, res.stdout[-2000:] + res.stderr[-2000:]
        out = json_out(res)
        assert out["publish"]["state"] == "published" and out["reconciled"] is True
        published_live = sides(job)[1]  # read after the publish commit
        # counted now: later live commits may expire the publish snapshot (keep_versions)
        assert len(publish_commits(job)) == 1

        def live_committed_after_publish() -> bool:
            # fail at once, saying why, if a party that must keep running has stopped
            assert live.poll() is None, live_log_tail(job)
            assert producer.error is None and producer.is_alive(), producer.error
            assert poller.error is None and poller.is_alive(), poller.error
            return poller.seen[-1][1] > published_live

        try:
            wait_until(live_committed_after_publish, 120, "a live commit after publish")
        except AssertionError as exc:  # say what the reader and the live consumer last saw
            seen_last = poller.seen[-5:]
            raise AssertionError(f"{exc}; poller saw {seen_last}; {live_log_tail(job)}") from None
        seen = poller.finish()
        delivered = producer.finish()
        wait_until(lambda: sides(job)[1] == len(delivered), 90, "live to catch up")

    n_history = 30 + len(history.delivered)
    backfill_seen = [b for b, _ in seen]
    assert set(backfill_seen) == {0, n_history}, sorted(set(backfill_seen))
    first_full = backfill_seen.index(n_history)
    assert all(b == n_history for b in backfill_seen[first_full:])  # never back to fewer
    live_before = [live for b, live in seen[:first_full]]
    assert live_before[-1] > live_before[0]  # the live writer committed while staged
    assert seen[-1][1] > published_live  # ... and after the publish

    rows = table_rows(job)
    back = rows.filter(pc.equal(rows[lineage.SIDE], "backfill"))
    assert sorted(back["order_id"].to_pylist()) == sorted(
        history.archive["order_id"].to_pylist() + list(history.delivered.values())
    )
    kafka = rows.filter(pc.equal(rows[lineage.SOURCE], "kafka"))
    pairs = list(zip(kafka[lineage.PARTITION].to_pylist(), kafka[lineage.OFFSET].to_pylist(),
                     strict=True))  # fmt: skip
    assert len(pairs) == len(set(pairs))  # exactly once
    assert set(pairs) == set(history.delivered) | set(delivered)
    doc = status(job)
    assert doc["publish"]["state"] == "published" and "staged" not in doc["counts"]


def _drop_staged_files(job: JobSpec, fmt: str) -> str:
    """Make one staged slice lose its files in the state store (a staged history that no
    longer matches the source)."""
    key = "$.staged.files" if fmt == "iceberg" else "$.staged.fragments"
    with sqlite3.connect(job.base_dir / "state.db") as db:
        (slice_id,) = db.execute(
            "SELECT slice_id FROM slices WHERE status = 'staged' AND kind = 'kafka' LIMIT 1"
        ).fetchone()
        db.execute(
            "UPDATE slices SET commit_token = json_set(commit_token, ?, json('[]')) "
            "WHERE slice_id = ?",
            (key, slice_id),
        )
    return str(slice_id)


@pytest.mark.parametrize("fmt", ["lance", "iceberg"])
def test_a_staged_history_that_does_not_reconcile_blocks_the_publish(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    load_history(tmp_path, kafka_bootstrap, topic, archive_n=10, topic_n=30)
    job = atomic_job(tmp_path, fmt, kafka_bootstrap, topic)
    assert run_crashing(job, "run.before_publish").returncode == -signal.SIGKILL
    _drop_staged_files(job, fmt)

    res = seamline("run", job_path(job), "--output", "json")
    assert res.returncode == ExitCode.NOT_RECONCILED, res.stdout[-2000:] + res.stderr[-2000:]
    out = json_out(res)
    assert out["publish"]["state"] == "staged" and out["reconcile"]["lost"] > 0
    assert sides(job) == (0, 0)  # nothing visible
    assert publish_commits(job) == []
    assert status(job)["publish"]["state"] == "staged"


def test_a_failed_assertion_blocks_the_publish(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    load_history(tmp_path, kafka_bootstrap, topic, archive_n=10, topic_n=90)
    check = '[[backfill.assert]]\ncheck = "min_rows"\nmin = 15\n'
    job = atomic_job(tmp_path, "lance", kafka_bootstrap, topic)
    path = Path(job_path(job))
    path.write_text(path.read_text().replace("[live]\n", f"{check}[live]\n"))
    job = load_job(path)

    res = seamline("run", job_path(job), "--output", "json")
    assert res.returncode == ExitCode.NOT_RECONCILED, res.stdout[-2000:] + res.stderr[-2000:]
    out = json_out(res)
    assert out["failed"] and out["publish"]["state"] == "staged"
    assert "slices failed; they block the publish" in out["publish"]["error"]
    ds: Any = open_sink(job)
    assert ds.scan().num_rows == 0 and publish_commits(job) == []
    doc = status(job)
    assert doc["counts"]["failed"] == len(out["failed"]) and doc["counts"]["staged"] > 0
    assert doc["publish"]["state"] == "staged"
