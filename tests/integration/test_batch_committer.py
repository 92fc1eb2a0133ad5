"""``[backfill] committer = "coordinator"``: workers stage, the coordinator commits several
slices per table commit. Real broker, real Iceberg and Lance tables, read back directly (the
crash between a batch commit and its bookkeeping: test_fault_points.py,
``run.after_batch_commit``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from backfill.sinks import open_sink
from coordinator.core import lineage
from coordinator.core.errors import ExitCode
from coordinator.service import run_job
from coordinator.state.store import StateStore
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import produce
from tests.integration.test_warm_sinks import job_for

pytestmark = pytest.mark.integration

@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_the_coordinator_commits_staged_slices_three_per_commit_each_record_once(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(2)
    produce(kafka_bootstrap, topic, {0: 20, 1: 20})  # 2 x 20 records, slices of 5: 8 slices
    job = job_for(tmp_path, fmt, topic, kafka_bootstrap, job_id="batched", backfill="""
slice_records = 5
committer = "coordinator"
commit_batch_slices = 3
commit_batch_seconds = 600""")
    outcome = run_job(job, lag_gate=lambda: None, timeout_s=30)
    assert outcome.exit_code == ExitCode.OK and outcome.reconciled
    assert (outcome.run.total, outcome.run.committed) == (8, 8)

    sink: Any = open_sink(job)  # both sinks list their seamline commits (`commits()`)
    rows = sink.scan(columns=[lineage.PARTITION, lineage.OFFSET, "order_id"])
    seen = Counter(zip(rows[lineage.PARTITION].to_pylist(), rows[lineage.OFFSET].to_pylist(),
                       strict=True))  # fmt: skip
    assert seen == Counter({(p, o): 1 for p in (0, 1) for o in range(20)})  # each record once
    assert sorted(rows["order_id"].to_pylist()) == list(range(40))

    with StateStore(job.state_url()) as store:
        records = store.list_slices(job.job_id)
    assert {r.status for r in records} == {"reconciled"}  # committed, then proven
    batches = Counter(str((r.staged or {}).get("batch")) for r in records)
    assert sorted(batches.values()) == [2, 3, 3]  # 8 slices in three batch commits
    tokens = {c.token.slice_id for c in sink.commits()}
    assert tokens == set(batches)  # the table holds the three batch commits, no slice commit
    for bid in batches:
        found = sink.find_commit(job.job_id, bid)
        assert found is not None
        assert {int(r.snapshot_id or -1) for r in records
                if (r.staged or {}).get("batch") == bid} == {int(found.snapshot_id)}  # fmt: skip
