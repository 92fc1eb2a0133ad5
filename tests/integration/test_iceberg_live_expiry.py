"""Iceberg live appends racing a concurrent snapshot expiry (issue 12 item 9), deterministically.

Writer B's commit is intercepted right before its first catalog call; at that moment writer A
appends (B loses the compare-and-set) and expires every older snapshot, B's base included. The
pyiceberg rebase then fails with "Cannot find starting snapshot": that must be a retried
conflict, not "offsets moved". Real pyiceberg SQL-catalog table, read back to check.

Writers on one host take turns through a host-local commit lock, so this race is one between
writers on different hosts: the test switches that lock off (A commits while B is inside its
commit, in one process, which the lock would otherwise hold off for ever).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from backfill.sinks import common, open_sink
from backfill.sinks.iceberg.sink import IcebergSink
from coordinator.core import lineage
from coordinator.core.jobspec import JobSpec
from tests.contract.backfill_writers import Rows, make_job, token

pytestmark = pytest.mark.integration


def _job(tmp_path: Path) -> JobSpec:
    base = make_job("iceberg-overwrite", tmp_path, "127.0.0.1:1", "expiry")
    live = base.live.model_copy(update={"keep_snapshots": 1, "expire_snapshots_every": 0})
    return base.model_copy(update={"live": live})


def _sink(job: JobSpec) -> IcebergSink:
    sink = open_sink(job, min_age_s=0.0)
    assert isinstance(sink, IcebergSink)
    sink.ensure_table()
    return sink


def _append(sink: IcebergSink, rows: Rows) -> None:
    tok = token(f"live:{rows.partition}@{rows.start}", rows.range, "live")
    sink.append_live(rows.table("live"), tok)


def test_an_expired_base_snapshot_is_a_retried_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "location_lock", lambda *_: contextlib.nullcontext())
    job = _job(tmp_path)
    a, b = _sink(job), _sink(job)
    _append(a, Rows(base=0, partition=0, start=0, count=10))
    _append(b, Rows(base=1000, partition=1, start=0, count=10))

    table = b.live_table().table
    real = table._do_commit
    expired: list[int] = []

    def concurrent_then_commit(*args: Any, **kwargs: Any) -> Any:
        if not expired:  # once: A commits and expires B's base before B's first attempt
            base = table.current_snapshot()
            _append(a, Rows(base=10, partition=0, start=10, count=10))
            expired.append(a.maintain())
            assert base is not None
            assert a.live_table().table.metadata.snapshot_by_id(base.snapshot_id) is None
        return real(*args, **kwargs)

    monkeypatch.setattr(table, "_do_commit", concurrent_then_commit)
    _append(b, Rows(base=1010, partition=1, start=10, count=10))

    assert expired and expired[0] >= 2
    assert b.live_offsets() == {0: 20, 1: 20}
    data = b.scan(columns=[lineage.PARTITION, lineage.OFFSET])
    got = Counter(
        zip(data[lineage.PARTITION].to_pylist(), data[lineage.OFFSET].to_pylist(), strict=True)
    )
    assert got == Counter({(p, o): 1 for p in (0, 1) for o in range(20)})
