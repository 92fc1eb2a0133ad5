"""The writer contract (issue 4): every writer runs these tests unchanged.

Iceberg overwrite, Iceberg merge, Lance overwrite and Lance merge, against real pyiceberg
SQL-catalog tables and real Lance datasets on local files, plus Iceberg on the real REST
catalog server (warehouse on the S3 server) and Iceberg and Lance on the real S3 server
(``SERVER_WRITERS``), with a real broker for the Kafka source (marked
``integration``). The in-memory table fake (``tests/fakes/table.py``) in both modes runs the
single-process cases too, in the fast tier, so the fake behaves like the real writers; the
cases that need a second process (a concurrent live appender, kill -9 around a commit) are
left out for it: an in-memory table is not shared between processes.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backfill.executor import execute_slice
from backfill.sinks import open_sink
from coordinator.core import lineage
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import TableSink
from coordinator.core.values import Scope, Slice, TimeBucket
from tests.contract.backfill_writers import (
    DAY0,
    FAKE_WRITERS,
    SERVER_WRITERS,
    WRITERS,
    Rows,
    content,
    content_of,
    crashing_executor,
    live_appender,
    make_job,
    produce,
    servers_for,
    token,
)
from tests.fakes.table import FakeTable

# The second process (live appender, crashing executor) is a fresh process, as in production,
# but forked from a forkserver that imported the writers once: a ``spawn`` child re-imported
# pyiceberg, Lance and pyarrow for every test (~4-10 s each under load) before doing anything.
# The forkserver is single-threaded when it forks; a child opens its own sink, as before.
SPAWN = multiprocessing.get_context("forkserver")
SPAWN.set_forkserver_preload(
    [
        "tests.contract.backfill_writers",
        "backfill.sinks.iceberg.sink",
        "backfill.sinks.iceberg.live",
        "backfill.sinks.lance.sink",
        "backfill.sinks.lance.live",
    ]
)
HWM = 100  # the cut: backfill owns offsets [0, 100) of partition 0, live owns [100, ∞)


REAL = [pytest.param(w, marks=pytest.mark.integration) for w in (*WRITERS, *SERVER_WRITERS)]


def _job(writer: str, tmp_path: Path, request: pytest.FixtureRequest) -> JobSpec:
    servers = servers_for(writer, request)
    return make_job(writer, tmp_path, "127.0.0.1:1", "contract-topic", **servers)


@pytest.fixture(params=[*REAL, *FAKE_WRITERS])
def writer(request: pytest.FixtureRequest) -> str:
    """Each real writer (integration) and the in-memory fake in both modes (fast tier)."""
    name: str = request.param
    return name


@pytest.fixture
def job(writer: str, tmp_path: Path, request: pytest.FixtureRequest) -> JobSpec:
    """The writer's job."""
    return _job(writer, tmp_path, request)


@pytest.fixture
def sink(writer: str, job: JobSpec) -> TableSink:
    """The job's sink (or the fake) with its table created."""
    s: TableSink = FakeTable.for_job(job) if writer.startswith("fake-") else open_sink(job)
    s.ensure_table()
    return s


@pytest.fixture(params=REAL)
def real_job(request: pytest.FixtureRequest, tmp_path: Path) -> JobSpec:
    """A job for each real writer (topic filled in by Kafka tests)."""
    return _job(request.param, tmp_path, request)


def _content(job: JobSpec, sink: TableSink) -> list[dict[str, Any]]:
    """The table's content: a real table is read back through a freshly opened sink (the
    table itself, not the writer's view of it); the fake is its one in-memory table."""
    return content_of(sink) if isinstance(sink, FakeTable) else content(job)


def _kafka_slice(slice_id: str, rows: Rows) -> Slice:
    return Slice(slice_id, Scope("kafka", ranges=(rows.range,)))


def _archive_slice(slice_id: str, day: int) -> Slice:
    start = DAY0 + timedelta(days=day)
    return Slice(slice_id, Scope("archive", bucket=TimeBucket(start, start + timedelta(days=1))))


def _offsets(job: JobSpec, sink: TableSink, side: str) -> Counter[tuple[int | None, int | None]]:
    rows = [r for r in _content(job, sink) if r[lineage.SIDE] == side]
    return Counter((r[lineage.PARTITION], r[lineage.OFFSET]) for r in rows)


def test_rerunning_a_slice_leaves_content_identical(job: JobSpec, sink: TableSink) -> None:
    hist = Rows(base=0, partition=0, start=0, count=60)
    arch = Rows(base=10_000, partition=0, start=0, count=30, day=1)
    arch_slice = _archive_slice("a-day1", 1)
    sink.write_slice(
        _kafka_slice("k0", hist).scope, hist.table("backfill"), token("k0", hist.range)
    )
    sink.write_slice(arch_slice.scope, arch.table("backfill", "archive"), token("a-day1", None))
    first = _content(job, sink)
    assert len(first) == 90
    sink.write_slice(
        _kafka_slice("k0", hist).scope, hist.table("backfill"), token("k0", hist.range, attempt=2)
    )
    sink.write_slice(
        arch_slice.scope, arch.table("backfill", "archive"), token("a-day1", None, attempt=2)
    )
    assert _content(job, sink) == first
    found = sink.find_commit("contract", "k0")
    assert found is not None and found.token.attempt == 2


def test_late_live_rows_survive_the_backfill_of_their_day(job: JobSpec, sink: TableSink) -> None:
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
    assert _offsets(job, sink, "live") == Counter({(0, o): 1 for o in range(HWM, HWM + 5)})
    assert _offsets(job, sink, "backfill")[(0, 0)] == 1
    assert len(_content(job, sink)) == HWM + 5 + 20
    assert sink.live_offsets() == {0: HWM + 5}


def test_merge_or_overwrite_replaces_a_changed_slice(job: JobSpec, sink: TableSink) -> None:
    old = Rows(base=0, partition=0, start=0, count=40)
    sink.write_slice(_kafka_slice("k0", old).scope, old.table("backfill"), token("k0", old.range))
    new = Rows(base=0, partition=0, start=0, count=30)  # the re-read slice holds fewer rows
    sink.write_slice(
        _kafka_slice("k0", old).scope, new.table("backfill"), token("k0", old.range, attempt=2)
    )
    assert [r["order_id"] for r in _content(job, sink)] == list(range(30))


def test_a_concurrent_live_appender_loses_nothing(real_job: JobSpec) -> None:
    job, sink = real_job, open_sink(real_job)
    sink.ensure_table()
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
    assert _offsets(job, sink, "live") == Counter({(0, o): 1 for o in range(HWM, HWM + 60)})
    want: dict[tuple[int | None, int | None], int] = {(0, o): 1 for o in range(90)}
    want[(None, None)] = 30
    assert _offsets(job, sink, "backfill") == Counter(want)
    assert sink.live_offsets() == {0: HWM + 60}


@pytest.fixture
def kafka_job(
    real_job: JobSpec, kafka_bootstrap: str, kafka_topic: object, tmp_path: Path
) -> JobSpec:
    """The writer's job pointed at a fresh 1-partition topic holding 50 records."""
    topic = kafka_topic(1)  # type: ignore[operator]
    kjob = real_job.model_copy(
        update={
            "stream": real_job.stream.model_copy(
                update={"bootstrap": kafka_bootstrap, "topic": topic}
            )
        }
    )
    produce(kafka_bootstrap, topic, Rows(base=0, partition=0, start=0, count=50))
    return kjob


@pytest.mark.parametrize("crash_at", ["worker.before_commit", "worker.after_commit"])
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
    if crash_at == "worker.before_commit":
        assert content(kafka_job) == []
        assert sink.find_commit("contract", "k0") is None
    result = execute_slice(kafka_job, slice_, token("k0", rows.range, attempt=2))
    assert result.already_committed is (crash_at == "worker.after_commit")
    assert _offsets(kafka_job, sink, "backfill") == Counter({(0, o): 1 for o in range(50)})
    assert [r["order_id"] for r in content(kafka_job)] == list(range(50))
