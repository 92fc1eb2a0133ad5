"""Onboarding a stream end to end, on Iceberg and Lance: archive Parquet files + the topic's
retained range + a live stream produced throughout, ``seamline live`` in its own process,
``seamline run`` killed with ``kill -9`` mid-run and restarted; the run ends reconciled with
every count 0 and the table holds exactly the expected rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from backfill.sinks import open_sink
from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import JobSpec
from coordinator.state.store import StateStore
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import (
    ZERO,
    LiveProducer,
    counts,
    ends_of,
    job_path,
    json_out,
    kill_group,
    live_consumer,
    load_history,
    seamline,
    start,
    table_rows,
    wait_until,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def committed(job: JobSpec) -> int:
    with StateStore(job.state_url(), create=False) as store:
        return sum(r.status in ("committed", "reconciled") for r in store.list_slices(job.job_id))


def live_caught_up(job: JobSpec, ends: dict[int, int]) -> bool:
    table = {int(p): int(o) for p, o in open_sink(job).live_offsets().items()}
    return all(table.get(p) == e for p, e in ends.items())


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_onboarding_kill_9_mid_run_then_resume_ends_reconciled(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    root = tmp_path
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(root, kafka_bootstrap, topic)
    job = write_job(root, fmt, kafka_bootstrap, topic, slice_records=200)
    assert seamline("cut", job_path(job)).returncode == 0
    producer = LiveProducer(kafka_bootstrap, topic, first_id=1_000_000)
    producer.start()
    with live_consumer(job) as live:
        # each slice of the first run sleeps 1 s first (tests/integration/slow_executor.py):
        # on a quiet machine the whole run could otherwise finish between two polls
        slow = {"SEAMLINE_TEST_EXEC_DIR": str(job.base_dir), "SEAMLINE_TEST_EXEC_SLEEP": "1.0"}
        first = start(job, "run", job_path(job), "--output", "json", "--executor",
                      "tests.integration.slow_executor:execute", log_name="run1.log",
                      env=slow)  # fmt: skip
        wait_until(lambda: committed(job) >= 3, 180, "three committed slices")
        kill_group(first)  # kill -9 the coordinator and its workers mid-run
        with StateStore(job.state_url(), create=False) as store:
            total = len(store.list_slices(job.job_id))
        assert total == 3 + 6  # three archive months, 2 slices x 3 partitions
        assert committed(job) < total

        second = seamline("run", job_path(job), "--output", "json")
        assert second.returncode == ExitCode.OK, second.stderr
        doc = json_out(second)
        assert doc["reconciled"] is True and doc["committed"] == total, doc
        assert counts(doc["reconcile"]) == ZERO, doc

        live_delivered = producer.finish()
        assert live_delivered, "the producer produced during the run"
        everything = {**history.delivered, **live_delivered}
        wait_until(lambda: live_caught_up(job, ends_of(everything)), 120, "live to catch up")
        assert live.poll() is None, "the live consumer ran throughout"

    final = seamline("reconcile", job_path(job), "--output", "json")
    assert final.returncode == ExitCode.OK, final.stdout[-2000:]
    report = json_out(final)
    assert report["reconciled"] is True and counts(report["totals"]) == ZERO
    status = json_out(seamline("status", job_path(job), "--output", "json"))
    assert status["counts"] == {"reconciled": total}
    assert_table_is_exact(job, history.archive, everything)


def assert_table_is_exact(
    job: JobSpec, archive: pa.Table, delivered: dict[tuple[int, int], int]
) -> None:
    rows = table_rows(job)
    assert rows.num_rows == archive.num_rows + len(delivered)
    kafka = rows.filter(pc.equal(rows["_seamline_source"], "kafka"))
    got = list(
        zip(
            kafka["_kafka_partition"].to_pylist(),
            kafka["_kafka_offset"].to_pylist(),
            kafka["order_id"].to_pylist(),
            strict=True,
        )
    )
    assert got == sorted((p, o, oid) for (p, o), oid in delivered.items())
    arch = rows.filter(pc.equal(rows["_seamline_source"], "archive")).sort_by("order_id")
    want = archive.sort_by("order_id")
    for col in ("order_id", "amount", "customer", "ts"):
        assert arch[col].to_pylist() == want[col].to_pylist(), col
