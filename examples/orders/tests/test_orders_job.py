"""The orders job end to end on a real broker and a real Lance table, with a crash.

``seamline run`` is killed right after a slice committed to the table (before the state store
heard of it), runs on to the end, and the table -- read directly, not through seamline's
reconciler -- holds every history record exactly once, transformed. Then the live consumer
picks up exactly the records produced above the cut.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lance
import pytest
import seamline
from coordinator.testing.pytest_plugin import JobFactory, JobFile, KillAt, LiveProcess, Producer

pytestmark = pytest.mark.integration

TS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
FIELDS = {"id": "int64", "ts": "timestamp_ms", "email": "string"}


def orders(ids: range) -> list[dict[str, Any]]:
    return [{"id": i, "ts": TS + i * 1000, "email": f"  User{i}@Example.COM "} for i in ids]


def table_rows(job: JobFile) -> list[dict[str, Any]]:
    """The table's rows, read with Lance itself."""
    uri = job.spec.resolve(str(job.spec.table.uri))
    columns = ["id", "email", "_kafka_partition", "_kafka_offset", "_seamline_side"]
    return sorted(lance.dataset(uri).to_table(columns=columns).to_pylist(),
                  key=lambda r: r["id"])  # fmt: skip


def test_a_crash_after_a_commit_loses_and_duplicates_nothing_and_live_continues(
    seamline_job: JobFactory,
    seamline_producer: Producer,
    seamline_live: Callable[[JobFile], LiveProcess],
    kill_at: KillAt,
) -> None:
    job = seamline_job("lance", partitions=2, schema={"fields": FIELDS},
                       transform={"function": "orders_example.transform:clean"},
                       backfill={"slice_records": 4})  # fmt: skip
    history = seamline_producer.produce(job.topic, orders(range(20)))

    run = kill_at.run(job, "worker.after_commit")
    assert run.died_at == "worker.after_commit", run.stderr  # a worker died right there
    assert run.outcome["exit_code"] == 0 and run.outcome["reconciled"], run.outcome

    rows = table_rows(job)
    assert [r["id"] for r in rows] == list(range(20))  # each record once: none lost, no copy
    assert {r["email"] for r in rows} == {f"user{i}@example.com" for i in range(20)}
    assert {(r["_kafka_partition"], r["_kafka_offset"]) for r in rows} == set(history)
    assert {r["_seamline_side"] for r in rows} == {"backfill"}

    live = seamline_live(job)
    above = seamline_producer.produce(job.topic, orders(range(20, 26)))
    cut = {p: max(o for q, o in history if q == p) + 1 for p, _ in history}
    assert all(offset >= cut[p] for p, offset in above)  # the records are above the cut
    deadline = time.monotonic() + 60
    while len(rows := table_rows(job)) < 26 and time.monotonic() < deadline:
        assert live.proc.poll() is None, live.log
        time.sleep(0.2)
    assert live.stop() == 0, live.log
    assert [r["id"] for r in rows] == list(range(26)), live.log
    new = [r for r in rows if r["id"] >= 20]
    assert {(r["_kafka_partition"], r["_kafka_offset"]) for r in new} == set(above)
    assert {r["_seamline_side"] for r in new} == {"live"}
    assert new[0]["email"] == "user20@example.com"  # the same transform on the live side
    assert seamline.reconcile_job(job.spec).reconciled
