"""Live traffic comes first, end to end: a burst of live records above
``backfill.lag_threshold`` while ``seamline live`` is not running makes the real
:class:`LagGate` (lag = the topic's high watermark minus the live offsets committed in the
table) pause :func:`run_job` before any slice runs; once ``seamline live`` catches up the run
resumes and ends reconciled with every count 0, and ``seamline status`` lists the pauses."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backfill.sinks import open_sink
from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import JobSpec
from coordinator.demo.data import orders
from coordinator.run.lag_gate import LagGate, lag_value
from coordinator.run.orchestrate import JobOutcome
from coordinator.run.runner import StopSignal
from coordinator.service import make_lag_gate, run_job
from coordinator.state.store import StateStore
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import (
    LIVE_FROM,
    ZERO,
    counts,
    ends_of,
    job_path,
    json_out,
    live_consumer,
    load_history,
    produce_rows,
    seamline,
    take_cut,
    wait_until,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THRESHOLD = 50
BURST = 300  # live records produced after the cut while no live consumer runs
PAUSE_S = 0.3
REASON = "live lag above backfill.lag_threshold"


class RunThread(threading.Thread):
    """``run_job`` under a real lag gate, in a thread (its slices run in worker processes)."""

    def __init__(self, job: JobSpec, gate: LagGate) -> None:
        super().__init__(daemon=True)
        self.job, self.gate = job, gate
        self.stop_signal = StopSignal()
        self.outcome: JobOutcome | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.outcome = run_job(self.job, lag_gate=self.gate, stop=self.stop_signal)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float) -> JobOutcome:
        self.join(timeout)
        if self.is_alive():  # let it wind down so the worker processes do not outlive the test
            self.stop_signal.request()
            self.stop_signal.request()
            self.join(30)
            raise AssertionError(f"run_job did not finish within {timeout}s")
        assert self.error is None, repr(self.error)
        assert self.outcome is not None
        return self.outcome


def statuses(job: JobSpec) -> list[str]:
    with StateStore(job.state_url(), create=False) as store:
        return [r.status for r in store.list_slices(job.job_id)]


def pause_count(job: JobSpec) -> int:
    with StateStore(job.state_url(), create=False) as store:
        return len(store.list_pauses(job.job_id))


def live_caught_up(job: JobSpec, ends: dict[int, int]) -> bool:
    table = {int(p): int(o) for p, o in open_sink(job).live_offsets().items()}
    return all(table.get(p) == e for p, e in ends.items())


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_run_pauses_while_live_lags_and_resumes_when_live_catches_up(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(tmp_path, kafka_bootstrap, topic, archive_n=300, topic_n=600)
    job = write_job(
        tmp_path, fmt, kafka_bootstrap, topic, slice_records=200, lag_threshold=THRESHOLD
    )
    assert job.backfill.lag_threshold == THRESHOLD
    take_cut(job)
    with StateStore(job.state_url(), create=False) as store:
        cut = store.get_cut(job.job_id)
    assert cut is not None
    burst = orders(1_000_000, BURST, LIVE_FROM, datetime.now(UTC), seed=11)
    live_delivered = produce_rows(kafka_bootstrap, topic, burst, record_ts=False)
    assert len(live_delivered) == BURST > THRESHOLD

    hwm = {p.partition: p.hwm for p in cut.partitions}
    gate = make_lag_gate(
        job, pause_s=PAUSE_S, start_offsets=hwm, min_interval_s=0.1, max_wait_s=300
    )
    run = RunThread(job, gate)
    run.start()
    try:
        # Paused: pauses keep being recorded while every planned slice stays pending.
        wait_until(lambda: pause_count(job) >= 5, 60, "five lag pauses")
        held = statuses(job)
        assert held and set(held) == {"pending"}, held
        assert run.is_alive()
        assert gate.max_seen >= BURST // 3 and gate.threshold == THRESHOLD
        status = json_out(seamline("status", job_path(job), "--output", "json"))
        assert status["counts"] == {"pending": len(held)}, status["counts"]
        assert len(status["pauses"]) >= 5
        assert {p["reason"] for p in status["pauses"]} == {REASON}

        with live_consumer(job) as live:
            everything = {**history.delivered, **live_delivered}
            wait_until(lambda: live_caught_up(job, ends_of(everything)), 60, "live to catch up")
            outcome = run.finish(120)
            assert live.poll() is None, "the live consumer ran throughout"
    finally:
        if run.is_alive():
            run.stop_signal.request()
            run.stop_signal.request()
            run.join(30)

    # Resumed because the lag fell, not because the gate gave up waiting.
    assert gate.max_wait_s is not None and gate.paused_s < gate.max_wait_s
    assert lag_value(gate.last_lag, "total") <= THRESHOLD, gate.last_lag
    doc = outcome.to_json()
    assert outcome.exit_code == ExitCode.OK, doc
    assert doc["reconciled"] is True and doc["committed"] == doc["total"] == len(held), doc
    assert counts(doc["reconcile"]) == ZERO, doc
    assert len(outcome.pauses) >= 5
    assert all(p.seconds == PAUSE_S and p.reason == REASON for p in outcome.pauses)

    status = json_out(seamline("status", job_path(job), "--output", "json"))
    assert status["counts"] == {"reconciled": len(held)}, status["counts"]
    assert len(status["pauses"]) == len(outcome.pauses)
    assert all(p["reason"] == REASON and p["seconds"] == PAUSE_S for p in status["pauses"])
    assert status["reconcile"]["reconciled"] is True
