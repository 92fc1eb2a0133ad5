"""Per-slice assertions on real Kafka and real Iceberg and Lance tables: a slice failing its
``[[backfill.assert]]`` is never committed (its rows and its token are absent from the table,
read back), fails without a retry, and shows in ``run`` (exit 5) and ``status``."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest

from backfill.sinks import open_sink
from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import load_job
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import (
    job_path,
    json_out,
    load_history,
    seamline,
    table_rows,
    write_job,
)

pytestmark = pytest.mark.integration

# Topic ids 91..210 go to partition id % 3 in order; with 20 offsets per slice the first slice
# of every partition holds ids <= 150 and the second one ids > 150, which the check refuses.
ASSERT = """
[[backfill.assert]]
check = "range"
column = "order_id"
max = 150

[[backfill.assert]]
check = "min_rows"
min = 1
"""


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_a_failing_assertion_never_commits_its_slice(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(tmp_path, kafka_bootstrap, topic, archive_n=90, topic_n=120)
    job = write_job(tmp_path, fmt, kafka_bootstrap, topic, slice_records=20)
    Path(job_path(job)).write_text(Path(job_path(job)).read_text() + ASSERT)
    job = load_job(job_path(job))

    res = seamline("run", job_path(job), "--output", "json")
    assert res.returncode == ExitCode.PARTIAL, res.stderr[-2000:]
    doc = json_out(res)
    bad = [f"k-p{p}-000000020-000000040" for p in range(3)]
    assert doc["failed"] == bad and doc["reconciled"] is False
    for sid in bad:
        assert doc["errors"][sid].startswith(
            f"SliceAssertionError: slice_id={sid} check=range[order_id]: expected values <= 150, "
            "found 20 values outside"
        ), doc["errors"][sid]

    rows = table_rows(job)
    kafka = rows.filter(pc.equal(rows["_seamline_source"], "kafka"))
    want = sorted((p, o) for (p, o) in history.delivered if o < 20)
    assert (
        sorted(
            zip(
                kafka["_kafka_partition"].to_pylist(),
                kafka["_kafka_offset"].to_pylist(),
                strict=True,
            )
        )
        == want
    )
    assert max(kafka["order_id"].to_pylist()) <= 150
    assert rows.num_rows - kafka.num_rows == history.archive.num_rows  # archive slices passed
    sink = open_sink(job)
    for sid in bad:
        assert sink.find_commit(job.job_id, sid) is None  # no commit token in the table
    assert sink.find_commit(job.job_id, "k-p0-000000000-000000020") is not None

    status = json_out(seamline("status", job_path(job), "--output", "json"))
    failed = {s["slice_id"]: s for s in status["slices"] if s["status"] == "failed"}
    assert sorted(failed) == bad and sorted(status["remaining"]) == bad
    assert {s["attempts"] for s in failed.values()} == {1}  # terminal: not retried
    assert all("check=range[order_id]" in s["last_error"] for s in failed.values())
    text = seamline("status", job_path(job)).stdout
    assert f"failed slice={bad[0]}: SliceAssertionError: slice_id={bad[0]}" in text
