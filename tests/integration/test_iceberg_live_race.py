"""Two live writers racing on one partition of a real Iceberg table (issue 15 item 4).

The live commit uses pyiceberg's public transaction API only: the catalog refuses a commit
whose ``main`` moved since the metadata the offsets were validated on (``AssertRefSnapshotId``),
and seamline then reloads, re-validates the offsets and retries. Writer B is intercepted after
it validated the offsets and while it writes its data files; at that moment writer A commits.
Deterministic, real pyiceberg SQL-catalog table, checked by reading the table back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from backfill.sinks import open_sink
from backfill.sinks.iceberg import internals
from backfill.sinks.iceberg import live as live_mod
from backfill.sinks.iceberg.sink import IcebergSink
from coordinator.core import lineage
from coordinator.core.errors import CommitConflictError
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Scope
from tests.contract.backfill_writers import Rows, make_job, token

pytestmark = pytest.mark.integration


def _sink(job: JobSpec) -> IcebergSink:
    sink = open_sink(job, min_age_s=0.0)
    assert isinstance(sink, IcebergSink)
    sink.ensure_table()
    return sink


def _append(sink: IcebergSink, rows: Rows, name: str) -> None:
    sink.append_live(rows.table("live"), token(name, rows.range, "live"))


def _rows_in_table(sink: IcebergSink) -> Counter[tuple[int, int, int]]:
    data = sink.scan(columns=[lineage.PARTITION, lineage.OFFSET, "order_id"])
    cols = (data[c].to_pylist() for c in (lineage.PARTITION, lineage.OFFSET, "order_id"))
    return Counter(zip(*cols, strict=True))


def _during_b_file_write(monkeypatch: pytest.MonkeyPatch, concurrent: Callable[[], None]) -> None:
    """Run ``concurrent`` once, inside the next live data-file write (B's)."""
    real = internals.write_data_files
    done: list[bool] = []

    def hooked(table: Any, rows: pa.Table) -> Any:
        if not done:
            done.append(True)
            concurrent()
        return real(table, rows)

    monkeypatch.setattr(live_mod, "write_data_files", hooked)


def test_two_live_writers_racing_on_one_partition_land_exactly_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job("iceberg-overwrite", tmp_path, "127.0.0.1:1", "race")
    a, b = _sink(job), _sink(job)
    _during_b_file_write(
        monkeypatch, lambda: _append(a, Rows(base=0, partition=0, start=0, count=10), "a")
    )
    with pytest.raises(CommitConflictError, match="partition=0: expected 0, found 10"):
        _append(b, Rows(base=500, partition=0, start=0, count=10), "b")

    fresh = _sink(job)
    assert _rows_in_table(fresh) == Counter({(0, o, o): 1 for o in range(10)})
    assert fresh.live_offsets() == {0: 10}
    assert [r.token.slice_id for r in fresh.commits()] == ["a"]


def test_a_concurrent_backfill_commit_is_retried_and_the_batch_lands_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job("iceberg-overwrite", tmp_path, "127.0.0.1:1", "race-bf")
    a, b = _sink(job), _sink(job)
    _append(b, Rows(base=0, partition=0, start=0, count=10), "live-0")
    hist = Rows(base=9000, partition=3, start=0, count=5)

    def backfill() -> None:
        a.write_slice(
            Scope("kafka", ranges=(hist.range,)), hist.table("backfill"), token("k3", hist.range)
        )

    _during_b_file_write(monkeypatch, backfill)  # main moves, partition 0's offset does not
    _append(b, Rows(base=10, partition=0, start=10, count=10), "live-1")

    fresh = _sink(job)
    want = Counter({(0, o, o): 1 for o in range(20)})
    want.update({(3, o, 9000 + o): 1 for o in range(5)})
    assert _rows_in_table(fresh) == want
    assert fresh.live_offsets() == {0: 20}
    assert sorted(r.token.slice_id for r in fresh.commits()) == ["k3", "live-0", "live-1"]
