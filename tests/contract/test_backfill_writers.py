"""The writer contract (issue 4): every writer runs these tests unchanged.

Iceberg overwrite, Iceberg merge, Lance overwrite and Lance merge, against real pyiceberg
SQL-catalog tables and real Lance datasets, with a real broker for the Kafka source.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from backfill.executor import execute_slice
from backfill.sinks.registry import open_sink
from coordinator.core import lineage
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import TableSink
from coordinator.core.values import Scope, Slice, TimeBucket
from tests.contract.backfill_writers import (
    DAY0,
    SERVER_WRITERS,
    WRITERS,
    Rows,
    content,
    crashing_executor,
    expect_live_refused_on_rest,
    live_appender,
    make_job,
    produce,
    servers_for,
    token,
)

pytestmark = pytest.mark.integration

SPAWN = multiprocessing.get_context("spawn")
HWM = 100  # the cut: backfill owns offsets [0, 100) of partition 0, live owns [100, ∞)


@pytest.fixture(params=WRITERS + SERVER_WRITERS)
def job(request: pytest.FixtureRequest, tmp_path: Path) -> JobSpec:
    """A job for each of the four writers, and Iceberg on the REST catalog (topic filled in by
    Kafka tests)."""
    writer: str = request.param
    return make_job(writer, tmp_path, "127.0.0.1:1", "contract-topic",
                    **servers_for(writer, request))


@pytest.fixture
def sink(job: JobSpec) -> TableSink:
    """The job's sink with its table created."""
    s = open_sink(job)
    s.ensure_table()
    return s


def _kafka_slice(slice_id: str, rows: Rows) -> Slice:
    return Slice(slice_id, Scope("kafka", ranges=(rows.range,)))


def _archive_slice(slice_id: str, day: int) -> Slice:
    start = DAY0 + timedelta(days=day)
    return Slice(slice_id, Scope("archive", bucket=TimeBucket(start, start + timedelta(days=1))))


def _offsets(job: JobSpec, side: str) -> Counter[tuple[int | None, int | None]]:
    rows = [r for r in content(job) if r[lineage.SIDE] == side]
    return Counter((r[lineage.PARTITION], r[lineage.OFFSET]) for r in rows)


def test_rerunning_a_slice_leaves_content_identical(job: JobSpec, sink: TableSink) -> None:
    hist = Rows(base=0, partition=0, start=0, count=60)
    arch = Rows(base=10_000, partition=0, start=0, count=30, day=1)
    arch_slice = _archive_slice("a-day1", 1)
    sink.write_slice(
        _kafka_slice("k0", hist).scope, hist.table("backfill"), token("k0", hist.range)
    )
    sink.write_slice(arch_slice.scope, arch.table("backfill", "archive"), token("a-day1", None))
    first = content(job)
    assert len(first) == 90
    sink.write_slice(
        _kafka_slice("k0", hist).scope, hist.table("backfill"), token("k0", hist.range, attempt=2)
    )
    sink.write_slice(
        arch_slice.scope, arch.table("backfill", "archive"), token("a-day1", None, attempt=2)
    )
    assert content(job) == first
    found = sink.find_commit("contract", "k0")
    assert found is not None and found.token.attempt == 2


def test_late_live_rows_survive_the_backfill_of_their_day(
    job: JobSpec, sink: TableSink, request: pytest.FixtureRequest
) -> None:
    expect_live_refused_on_rest(job, request)
    late = Rows(base=50_000, partition=0, start=HWM, count=5, day=0)  # historical day, live offsets
    sink.append_live(late.table("live"), token("live-0", late.range, side="live"))
    hist = Rows(base=0, partition=0, start=0, count=HWM, day=0)
    arch = Rows(base=10_000, partition=0, start=0, count=20, day=0)
    sink.write_slice(
        _kafka_slice("k0", hist).scope, hist.table("backfill"), token("k0", hist.range)
    )
    sink.write_slice(
        _archive_slice("a-day0", 0).scope, arch.table("backfill", "archive"), token("a-day0", None)
    )
    assert _offsets(job, "live") == Counter({(0, o): 1 for o in range(HWM, HWM + 5)})
    assert _offsets(job, "backfill")[(0, 0)] == 1
    assert len(content(job)) == HWM + 5 + 20
    assert sink.live_offsets() == {0: HWM + 5}


def test_merge_or_overwrite_replaces_a_changed_slice(job: JobSpec, sink: TableSink) -> None:
    old = Rows(base=0, partition=0, start=0, count=40)
    sink.write_slice(_kafka_slice("k0", old).scope, old.table("backfill"), token("k0", old.range))
    new = Rows(base=0, partition=0, start=0, count=30)  # the re-read slice holds fewer rows
    sink.write_slice(
        _kafka_slice("k0", old).scope, new.table("backfill"), token("k0", old.range, attempt=2)
    )
    assert [r["order_id"] for r in content(job)] == list(range(30))


def test_a_concurrent_live_appender_loses_nothing(
    job: JobSpec, sink: TableSink, request: pytest.FixtureRequest
) -> None:
    expect_live_refused_on_rest(job, request)
    live = [
        Rows(base=100_000 + 10 * i, partition=0, start=HWM + 10 * i, count=10, day=i % 3)
        for i in range(6)
    ]
    ready = SPAWN.Event()
    child = SPAWN.Process(target=live_appender, args=(job, live, ready))
    child.start()
    assert ready.wait(60)
    for day in range(3):
        hist = Rows(base=1000 * day, partition=0, start=30 * day, count=30, day=day)
        sink.write_slice(
            _kafka_slice(f"k{day}", hist).scope,
            hist.table("backfill"),
            token(f"k{day}", hist.range),
        )
        arch = Rows(base=20_000 + 1000 * day, partition=0, start=0, count=10, day=day)
        sink.write_slice(
            _archive_slice(f"a{day}", day).scope,
            arch.table("backfill", "archive"),
            token(f"a{day}", None),
        )
    child.join(120)
    assert child.exitcode == 0
    assert _offsets(job, "live") == Counter({(0, o): 1 for o in range(HWM, HWM + 60)})
    want: dict[tuple[int | None, int | None], int] = {(0, o): 1 for o in range(90)}
    want[(None, None)] = 30
    assert _offsets(job, "backfill") == Counter(want)
    assert sink.live_offsets() == {0: HWM + 60}


@pytest.fixture
def kafka_job(job: JobSpec, kafka_bootstrap: str, kafka_topic: object, tmp_path: Path) -> JobSpec:
    """The writer's job pointed at a fresh 1-partition topic holding 50 records."""
    topic = kafka_topic(1)  # type: ignore[operator]
    kjob = job.model_copy(
        update={
            "stream": job.stream.model_copy(update={"bootstrap": kafka_bootstrap, "topic": topic})
        }
    )
    produce(kafka_bootstrap, topic, Rows(base=0, partition=0, start=0, count=50))
    return kjob


@pytest.mark.parametrize("crash_at", ["before_commit", "after_commit"])
def test_kill_9_around_the_commit_then_rerun_is_exact(kafka_job: JobSpec, crash_at: str) -> None:
    rows = Rows(base=0, partition=0, start=0, count=50)
    slice_ = _kafka_slice("k0", rows)
    tok = token("k0", rows.range)
    open_sink(kafka_job).ensure_table()
    child = SPAWN.Process(target=crashing_executor, args=(kafka_job, slice_, tok, crash_at))
    child.start()
    child.join(120)
    assert child.exitcode == -9
    sink = open_sink(kafka_job)
    if crash_at == "before_commit":
        assert content(kafka_job) == []
        assert sink.find_commit("contract", "k0") is None
    result = execute_slice(kafka_job, slice_, token("k0", rows.range, attempt=2))
    assert result.already_committed is (crash_at == "after_commit")
    assert _offsets(kafka_job, "backfill") == Counter({(0, o): 1 for o in range(50)})
    assert [r["order_id"] for r in content(kafka_job)] == list(range(50))
