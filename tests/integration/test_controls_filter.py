"""The history row filter on real Kafka and real Iceberg and Lance tables: only the selected
archive and topic rows are written (read back from the table) and the run reconciles with the
filtered-out rows counted neither as lost nor as anything else."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import load_job
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import (
    ZERO,
    counts,
    job_path,
    json_out,
    load_history,
    seamline,
    table_rows,
    write_job,
)

pytestmark = pytest.mark.integration

WHERE = 'where = [{column = "status", op = "in", value = ["paid", "shipped"]}]\n'


def _selected(rows: pa.Table) -> list[int]:
    keep = pc.is_in(rows["status"], pa.array(["paid", "shipped"]))
    return sorted(rows.filter(keep)["order_id"].to_pylist())


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_a_filtered_backfill_writes_the_selected_rows_and_reconciles(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(tmp_path, kafka_bootstrap, topic, archive_n=90, topic_n=120)
    job = write_job(tmp_path, fmt, kafka_bootstrap, topic, slice_records=40)
    path = Path(job_path(job))
    path.write_text(
        path.read_text().replace("[history]\nkafka = true\n", "[history]\nkafka = true\n" + WHERE)
    )
    job = load_job(path)
    assert job.history.where, "the filter is in the job"

    res = seamline("run", str(path), "--output", "json")
    assert res.returncode == ExitCode.OK, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json_out(res)
    assert doc["reconciled"] is True and counts(doc["reconcile"]) == ZERO, doc["reconcile"]

    rows = table_rows(job)
    archive = rows.filter(pc.equal(rows["_seamline_source"], "archive"))
    kafka = rows.filter(pc.equal(rows["_seamline_source"], "kafka"))
    want_archive, want_topic = _selected(history.archive), _selected(history.topic)
    assert 0 < len(want_archive) < history.archive.num_rows  # the filter really drops rows
    assert 0 < len(want_topic) < history.topic.num_rows
    assert sorted(archive["order_id"].to_pylist()) == want_archive
    assert sorted(kafka["order_id"].to_pylist()) == want_topic
    assert set(rows["status"].to_pylist()) <= {"paid", "shipped"}
