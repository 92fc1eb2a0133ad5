"""The live-append contract: every table format runs these tests unchanged.

A live append is conditional on the table's current live offsets and atomic with its token, so
a zombie consumer can never write a range twice, writers of disjoint partitions never clobber
each other's offsets, and maintenance (Iceberg snapshot expiry, Lance version cleanup) never
loses an offset. Real pyiceberg SQL-catalog tables and real Lance datasets on local files, an
Iceberg table on the real REST catalog server (warehouse on the S3 server) and a Lance dataset
on the real S3 server.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from backfill.sinks import open_sink
from coordinator.core import lineage
from coordinator.core.errors import CommitConflictError
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import TableSink
from coordinator.core.values import Scope
from tests.contract.backfill_writers import Rows, make_job, servers_for, token

pytestmark = pytest.mark.integration

FORMATS = ("iceberg-overwrite", "lance-overwrite", "iceberg-overwrite@rest", "lance-overwrite@s3")


@pytest.fixture(params=FORMATS)
def job(request: pytest.FixtureRequest, tmp_path: Path) -> JobSpec:
    """A job per table format; maintenance every 5 live commits, keeping 2 versions."""
    servers = servers_for(request.param, request)
    base = make_job(request.param, tmp_path, "127.0.0.1:1", "live-contract", **servers)
    live = base.live.model_copy(update={"keep_snapshots": 2, "expire_snapshots_every": 5})
    return base.model_copy(update={"live": live})


def _sink(job: JobSpec) -> TableSink:
    sink = open_sink(job, min_age_s=0.0)
    sink.ensure_table()
    return sink


def _append(sink: TableSink, rows: Rows) -> None:
    tok = token(f"live:{rows.partition}@{rows.start}-{rows.start + rows.count}", rows.range, "live")
    sink.append_live(rows.table("live"), tok)


def _live_offsets_in_table(sink: TableSink) -> Counter[tuple[int, int]]:
    data = sink.scan(columns=[lineage.PARTITION, lineage.OFFSET, lineage.SIDE])
    return Counter(
        (p, o)
        for p, o, side in zip(
            data[lineage.PARTITION].to_pylist(),
            data[lineage.OFFSET].to_pylist(),
            data[lineage.SIDE].to_pylist(),
            strict=True,
        )
        if side == "live"
    )


def test_two_writers_racing_for_a_range_commit_it_once(job: JobSpec) -> None:
    writers = [_sink(job), open_sink(job, min_age_s=0.0)]
    outcomes: list[str] = []
    for round_ in range(5):
        barrier = threading.Barrier(2)
        rows = Rows(base=round_ * 10, partition=0, start=round_ * 10, count=10)

        def run(w: TableSink, rows: Rows = rows, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                _append(w, rows)
                outcomes.append("ok")
            except CommitConflictError:
                outcomes.append("conflict")

        threads = [threading.Thread(target=run, args=(w,)) for w in writers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert Counter(outcomes) == Counter({"ok": 5, "conflict": 5})
    assert _live_offsets_in_table(writers[0]) == Counter({(0, o): 1 for o in range(50)})
    assert writers[1].live_offsets() == {0: 50}


def test_a_zombie_cannot_rewrite_or_skip_a_range(job: JobSpec) -> None:
    sink, zombie = _sink(job), open_sink(job, min_age_s=0.0)
    _append(sink, Rows(base=0, partition=0, start=0, count=10))
    assert zombie.live_offsets() == {0: 10}
    _append(sink, Rows(base=10, partition=0, start=10, count=10))
    with pytest.raises(CommitConflictError, match="expected"):
        _append(zombie, Rows(base=10, partition=0, start=10, count=10))  # already written
    with pytest.raises(CommitConflictError):
        _append(zombie, Rows(base=30, partition=0, start=30, count=10))  # would leave a gap
    assert _live_offsets_in_table(sink) == Counter({(0, o): 1 for o in range(20)})
    assert sink.live_offsets() == {0: 20}


def test_writers_of_disjoint_partitions_never_clobber_offsets(job: JobSpec) -> None:
    writers = [_sink(job), open_sink(job, min_age_s=0.0)]

    def run(p: int) -> None:
        for start in range(0, 60, 10):
            _append(writers[p], Rows(base=1000 * p + start, partition=p, start=start, count=10))

    threads = [threading.Thread(target=run, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writers[0].live_offsets() == {0: 60, 1: 60}
    want = Counter({(p, o): 1 for p in (0, 1) for o in range(60)})
    assert _live_offsets_in_table(writers[0]) == want


def test_offsets_survive_maintenance_and_still_guard_appends(job: JobSpec) -> None:
    sink = _sink(job)
    for i in range(12):  # automatic maintenance after commits 5 and 10
        _append(sink, Rows(base=100 * i, partition=i % 2, start=10 * (i // 2), count=10))
    hist = Rows(base=9000, partition=5, start=0, count=10)  # the newest commit: a backfill one
    sink.write_slice(
        Scope("kafka", ranges=(hist.range,)), hist.table("backfill"), token("k5", hist.range)
    )
    sink.maintain()
    assert sink.maintain() >= 0
    assert _versions(job, sink) <= 2 + 5
    fresh = open_sink(job, min_age_s=0.0)
    assert fresh.live_offsets() == {0: 60, 1: 60}
    with pytest.raises(CommitConflictError):
        _append(fresh, Rows(base=0, partition=0, start=50, count=10))
    _append(fresh, Rows(base=0, partition=0, start=60, count=10))
    assert fresh.live_offsets() == {0: 70, 1: 60}
    assert sum(_live_offsets_in_table(fresh).values()) == 130


def _versions(job: JobSpec, sink: TableSink) -> int:
    import lance

    from backfill.sinks import lance_location, open_catalog

    if job.table.format == "iceberg":
        return len(open_catalog(job).load_table(str(job.table.identifier)).snapshots())
    uri, options = lance_location(job)
    return len(lance.dataset(uri, storage_options=options).versions())


def test_find_commit_by_token_returns_the_batch(job: JobSpec) -> None:
    sink = _sink(job)
    for start in (0, 10, 20):
        _append(sink, Rows(base=start, partition=2, start=start, count=10))
    found = sink.find_commit("contract", "live:2@10-20")
    assert found is not None
    assert found.token.side == "live"
    assert [(r.partition, r.start, r.end) for r in found.token.ranges] == [(2, 10, 20)]
    assert sink.find_commit("contract", "live:2@30-40") is None
