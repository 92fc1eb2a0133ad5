"""Table maintenance under a live appender (issue 15 item 5), on real tables read back.

Compaction rewrites small files while a live writer commits: both orderings of the race are
forced deterministically on Iceberg (the live commit lands first, then the compaction lands
first), and a threaded run on both formats checks that every live row is in the table exactly
once afterwards, rows (lineage columns included) unchanged, offsets unchanged.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from backfill.sinks import open_sink
from backfill.sinks.iceberg import compact as compact_mod
from backfill.sinks.iceberg import internals
from backfill.sinks.iceberg import live as live_mod
from backfill.sinks.iceberg.sink import IcebergSink
from coordinator.core import lineage
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import TableSink
from tests.contract.backfill_writers import Rows, content_of, make_job, token

pytestmark = pytest.mark.integration

BATCH = 5


def _sink(job: JobSpec) -> Any:
    sink = open_sink(job, min_age_s=0.0)
    sink.ensure_table()
    return sink


def _batch(i: int, partition: int = 0) -> Rows:
    return Rows(
        base=1000 * partition + BATCH * i,
        partition=partition,
        start=BATCH * i,
        count=BATCH,
        day=i % 3,
    )


def _append(sink: TableSink, rows: Rows) -> None:
    sink.append_live(
        rows.table("live"), token(f"live:{rows.partition}@{rows.start}", rows.range, "live")
    )


def _offsets(sink: TableSink) -> Counter[tuple[int, int]]:
    data = sink.scan(columns=[lineage.PARTITION, lineage.OFFSET])
    cols = (data[lineage.PARTITION].to_pylist(), data[lineage.OFFSET].to_pylist())
    return Counter(zip(*cols, strict=True))


def _data_files(sink: IcebergSink) -> int:
    return len(list(sink.live_table().table.refresh().scan().plan_files()))


def _hook_once(
    monkeypatch: pytest.MonkeyPatch, module: Any, concurrent: Callable[[], None]
) -> list[bool]:
    real = internals.write_data_files
    fired: list[bool] = []

    def hooked(table: Any, rows: pa.Table) -> Any:
        if not fired:
            fired.append(True)
            concurrent()
        return real(table, rows)

    monkeypatch.setattr(module, "write_data_files", hooked)
    return fired


def _iceberg(tmp_path: Path, name: str) -> JobSpec:
    return make_job("iceberg-overwrite", tmp_path, "127.0.0.1:1", name)


def test_compaction_keeps_every_row_and_its_lineage(tmp_path: Path) -> None:
    job = _iceberg(tmp_path, "compact")
    sink = _sink(job)
    for i in range(12):
        _append(sink, _batch(i))
    before = content_of(sink)
    assert _data_files(sink) == 12
    done = sink.compact()
    assert (done.partitions, done.files_removed, done.files_added, done.rows) == (3, 12, 3, 60)
    fresh = _sink(job)
    assert content_of(fresh) == before  # every column, lineage included
    assert _data_files(fresh) == 3  # one file per day partition
    assert fresh.live_offsets() == {0: 60}
    _append(fresh, _batch(12))  # offsets still guard appends after compaction
    assert _offsets(fresh) == Counter({(0, o): 1 for o in range(65)})


def _compactions(sink: IcebergSink) -> int:
    table = sink.live_table().table.refresh()
    return sum(
        s.summary is not None and s.summary[compact_mod.COMPACTION_PROPERTY] == "compact"
        for s in table.snapshots()
    )


@pytest.mark.parametrize(("commit_bytes", "commits"), [(compact_mod.COMMIT_BYTES, 1), (1, 20)])
def test_compaction_of_many_partitions_is_one_commit_within_its_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commit_bytes: int, commits: int
) -> None:
    # A live consumer whose late events touch hundreds of day partitions compacted them one
    # commit each, each rewriting the metadata: under load its whole cadence went to it.
    monkeypatch.setattr(compact_mod, "COMMIT_BYTES", commit_bytes)
    job = _iceberg(tmp_path, f"compact-{commits}")
    sink = _sink(job)
    for i in range(40):
        rows = _batch(i)
        _append(sink, Rows(rows.base, rows.partition, rows.start, rows.count, day=i % 20))
    before = content_of(sink)
    done = sink.compact()
    assert (done.partitions, done.files_removed, done.files_added, done.rows) == (20, 40, 20, 200)
    assert _compactions(sink) == commits  # 1 within the budget; a 1-byte budget: 1 each
    fresh = _sink(job)
    assert content_of(fresh) == before
    assert _data_files(fresh) == 20
    assert _offsets(fresh) == Counter({(0, o): 1 for o in range(200)})


def _manifests(sink: IcebergSink) -> list[tuple[int, int, int]]:
    table = sink.live_table().table.refresh()
    snapshot = table.current_snapshot()
    assert snapshot is not None
    return [
        (m.added_files_count or 0, m.existing_files_count or 0, m.deleted_files_count or 0)
        for m in snapshot.manifests(table.io)
    ]


def test_compaction_leaves_no_manifest_of_deleted_files_to_plan(tmp_path: Path) -> None:
    # Every later scan would read the rewrite's manifest of DELETED entries (12 here, 3,000
    # after 1,000 live commits) until some commit leaves it out: compaction does at once.
    job = _iceberg(tmp_path, "manifests")
    sink = _sink(job)
    for i in range(12):
        _append(sink, _batch(i))
    before = content_of(sink)
    assert sink.compact().files_removed == 12
    manifests = _manifests(sink)
    assert manifests and all(added or existing for added, existing, _ in manifests), manifests
    assert sum(added + existing for added, existing, _ in manifests) == 3
    assert content_of(_sink(job)) == before


def test_a_live_commit_landing_mid_compaction_makes_it_replan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _iceberg(tmp_path, "compact-race-1")
    maint, live = _sink(job), _sink(job)
    for i in range(6):
        _append(live, _batch(i))
    fired = _hook_once(monkeypatch, compact_mod, lambda: _append(live, _batch(6)))
    done = maint.compact()
    assert fired and done.conflicts == 1 and done.partitions == 3
    fresh = _sink(job)
    assert _offsets(fresh) == Counter({(0, o): 1 for o in range(35)})
    assert fresh.live_offsets() == {0: 35}
    assert _data_files(fresh) == 3


def test_a_compaction_landing_mid_live_commit_makes_it_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _iceberg(tmp_path, "compact-race-2")
    maint, live = _sink(job), _sink(job)
    for i in range(6):
        _append(live, _batch(i))
    results: list[Any] = []
    fired = _hook_once(monkeypatch, live_mod, lambda: results.append(maint.compact()))
    _append(live, _batch(6))  # validated at offset 30, compaction lands, commit retried
    assert fired and results[0].files_removed == 6
    fresh = _sink(job)
    assert _offsets(fresh) == Counter({(0, o): 1 for o in range(35)})
    assert fresh.live_offsets() == {0: 35}


@pytest.mark.parametrize("writer", ["iceberg-overwrite", "lance-overwrite"])
def test_maintenance_running_beside_a_live_appender_loses_nothing(
    tmp_path: Path, writer: str
) -> None:
    job = make_job(writer, tmp_path, "127.0.0.1:1", "compact-threads")
    live, maint = _sink(job), _sink(job)
    stop = threading.Event()
    errors: list[BaseException] = []

    def appender() -> None:
        try:
            for i in range(30):
                _append(live, _batch(i // 2, partition=i % 2))
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=appender)
    thread.start()
    rounds = 0
    while not stop.is_set() or rounds == 0:
        maint.maintain_table()
        rounds += 1
    thread.join()
    maint.maintain_table()
    assert errors == []
    fresh = _sink(job)
    assert _offsets(fresh) == Counter({(p, o): 1 for p in (0, 1) for o in range(75)})
    assert fresh.live_offsets() == {0: 75, 1: 75}
    assert _files(job, fresh) == (3 if job.table.format == "iceberg" else 1)


def _files(job: JobSpec, sink: Any) -> int:
    """Data files (Iceberg) or fragments (Lance) the table reads now."""
    if job.table.format == "iceberg":
        return _data_files(sink)
    import lance

    return len(lance.dataset(str(job.table.uri)).get_fragments())


def test_backfill_slices_expire_snapshots_as_they_go(tmp_path: Path) -> None:
    from coordinator.core.values import Scope

    base = _iceberg(tmp_path, "backfill-cadence")
    live = base.live.model_copy(update={"keep_snapshots": 2, "expire_snapshots_every": 3})
    job = base.model_copy(update={"live": live})
    sink = _sink(job)
    for i in range(25):
        rows = Rows(base=10 * i, partition=1, start=10 * i, count=10, day=i % 3)
        sink.write_slice(
            Scope("kafka", ranges=(rows.range,)), rows.table("backfill"), token(f"k{i}", rows.range)
        )
    table = sink.live_table().table.refresh()
    assert len(table.snapshots()) <= 2 + 3 + 2  # without the cadence: 2 per slice, 50
    assert _offsets(_sink(job)) == Counter({(1, o): 1 for o in range(250)})
    manifests = table.current_snapshot().manifests(table.io)  # type: ignore[union-attr]
    assert len(manifests) <= 20  # merged at commit.manifest.min-count-to-merge; unmerged: 25
