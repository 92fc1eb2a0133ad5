"""Append mode on real Kafka and real Iceberg and Lance tables: a run writes every history
record once and reconciles; re-running a committed slice is a no-op (the table, read back, is
unchanged and has no new commit); a slice whose scope already holds rows is refused and
writes nothing; append mode with both archive and Kafka history is refused up front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backfill.executor import execute_slice
from backfill.sinks import open_sink
from coordinator.core.errors import ConfigError, ExitCode
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.core.values import CommitToken, Epoch, Scope, Slice
from coordinator.state.store import StateStore
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

ARCHIVE = (
    '[[history.archive]]\nglob = "{root}/archive/*.parquet"\nformat = "parquet"\nbucket = "month"\n'
)


def append_job(root: Path, fmt: str, bootstrap: str, topic: str, *, archive: bool) -> Path:
    job = write_job(root, fmt, bootstrap, topic, slice_records=20)
    path = Path(job_path(job))
    text = path.read_text().replace("[backfill]\n", '[backfill]\nmode = "append"\n')
    if not archive:
        text = text.replace(ARCHIVE.format(root=root), "")
    path.write_text(text)
    return path


def commits(job: JobSpec) -> int:
    """How many commits the table holds (both sinks list them; the port does not)."""
    sink: Any = open_sink(job)
    return len(sink.commits())


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_append_writes_once_and_a_rerun_of_a_committed_slice_is_a_no_op(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(tmp_path, kafka_bootstrap, topic, archive_n=30, topic_n=120)
    path = append_job(tmp_path, fmt, kafka_bootstrap, topic, archive=False)
    job = load_job(path)
    assert job.backfill.mode == "append" and not job.history.archive

    res = seamline("run", str(path), "--output", "json")
    assert res.returncode == ExitCode.OK, res.stdout[-2000:] + res.stderr[-2000:]
    assert counts(json_out(res)["reconcile"]) == ZERO
    rows = table_rows(job)
    got = list(
        zip(rows["_kafka_partition"].to_pylist(), rows["_kafka_offset"].to_pylist(), strict=True)
    )
    assert got == sorted(history.delivered)  # every record once, nothing else

    with StateStore(job.state_url(), create=False) as store:
        record = store.list_slices(job.job_id)[0]
    before, n_commits = table_rows(job), commits(job)
    token = CommitToken(
        job.job_id, record.slice_id, 9, Epoch(1), "backfill", record.slice.scope.ranges
    )
    again = execute_slice(job, record.slice, token)
    assert again.already_committed is True
    assert table_rows(job).equals(before) and commits(job) == n_commits

    # The same offsets under another slice id (as after a re-plan): refused, nothing written.
    moved = Slice("k-moved", Scope("kafka", record.slice.scope.ranges))
    with pytest.raises(
        ConfigError, match="slice_id=k-moved: append mode expected an empty scope, found 20 rows"
    ):
        execute_slice(
            job,
            moved,
            CommitToken(job.job_id, "k-moved", 1, Epoch(1), "backfill", moved.scope.ranges),
        )
    assert table_rows(job).equals(before) and commits(job) == n_commits


def test_append_with_archive_and_kafka_history_is_refused(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3)
    path = append_job(tmp_path, "lance", kafka_bootstrap, topic, archive=True)
    res = seamline("run", str(path))
    assert res.returncode == ExitCode.CONFIG, res.stderr
    assert "key=backfill.mode: append mode needs history that cannot overlap" in res.stderr
    assert not (tmp_path / "orders.lance").exists() and not (tmp_path / "state.db").exists()
