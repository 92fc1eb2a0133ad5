"""A warm worker keeps its sink between slices, and its commits still land on the table's
current head: real broker, real Iceberg and Lance tables, read back directly."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import pytest

from backfill import executor
from backfill.sinks import open_sink
from coordinator.core import lineage
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.core.values import CommitToken
from coordinator.run.pool import _epoch_guard
from coordinator.run.prepare import ensure_cut, ensure_plan
from coordinator.state.slices import SliceRecord
from coordinator.state.store import StateStore
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import produce

pytestmark = pytest.mark.integration

TABLES = {
    "iceberg": 'format = "iceberg"\nidentifier = "warm.orders"\n'
    'catalog_uri = "sqlite:///{root}/catalog.db"\nwarehouse = "warehouse"',
    "lance": 'format = "lance"\nuri = "table.lance"',
}


def job_for(root: Path, fmt: str, topic: str, bootstrap: str, *, job_id: str = "warm",
            backfill: str = "slice_records = 5") -> JobSpec:  # fmt: skip
    """An order job on ``topic`` into a fresh Iceberg (SQL catalog) or Lance table under
    ``root``; ``backfill`` is the body of its ``[backfill]`` table."""
    (root / "warehouse").mkdir()
    table = TABLES[fmt].format(root=root)
    (root / "job.toml").write_text(f"""
[job]
id = "{job_id}"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"
amount = "float64"
[table]
{table}
[backfill]
{backfill}
""")
    return load_job(root / "job.toml")


def token(job: JobSpec, rec: SliceRecord) -> CommitToken:
    return CommitToken(job.job_id, rec.slice_id, 1, rec.epoch, "backfill", rec.slice.scope.ranges)


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_a_worker_reuses_its_sink_and_commits_on_top_of_another_writers_commit(
    fmt: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = kafka_topic(1)
    produce(kafka_bootstrap, topic, {0: 15})
    job = job_for(tmp_path, fmt, topic, kafka_bootstrap)
    cut = ensure_cut(job, timeout_s=30)
    ensure_plan(job, cut, count=False)
    with StateStore(job.state_url()) as store:
        one, two, three = store.list_slices(job.job_id, cut.epoch)
    # as in a worker process of the pool (its cache is empty)
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    monkeypatch.setattr(executor, "_SINKS", type(executor._SINKS)())

    with _epoch_guard(job):
        executor.execute_slice(job, one.slice, token(job, one))
        (cached,) = executor._SINKS.values()
        # another process commits slice two meanwhile (the cached sink did not see it)
        other = open_sink(job)
        data, _ = executor.read_slice(job, two.slice)
        other.write_slice(two.slice.scope, data, token(job, two))
        again = executor.execute_slice(job, two.slice, token(job, two))
        executor.execute_slice(job, three.slice, token(job, three))
    assert list(executor._SINKS.values()) == [cached]  # one sink served all three slices
    assert again.already_committed  # the cached sink found the other writer's commit

    table = open_sink(job).scan(columns=[lineage.PARTITION, lineage.OFFSET])
    found = Counter(zip(*(table[c].to_pylist() for c in table.column_names), strict=True))
    assert found == Counter({(0, o): 1 for o in range(15)})  # each record once, none lost


def test_a_failed_slice_drops_the_workers_sink(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = kafka_topic(1)
    produce(kafka_bootstrap, topic, {0: 5})
    job = job_for(tmp_path, "lance", topic, kafka_bootstrap)
    cut = ensure_cut(job, timeout_s=30)
    ensure_plan(job, cut, count=False)
    with StateStore(job.state_url()) as store:
        (rec,) = store.list_slices(job.job_id, cut.epoch)
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    monkeypatch.setattr(executor, "_SINKS", type(executor._SINKS)())

    def broken(*_: object) -> None:
        raise OSError("storage went away")

    monkeypatch.setattr(executor, "read_slice", broken)
    with _epoch_guard(job), pytest.raises(OSError):
        executor.execute_slice(job, rec.slice, token(job, rec))
    assert not executor._SINKS  # the next slice opens a fresh one
