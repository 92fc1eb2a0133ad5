"""The archive reader on real Parquet, CSV and JSON-lines files, and an archive slice run
end to end through the executor into a real Iceberg table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backfill.executor import execute_slice
from backfill.sources.archive import read_archive_slice
from coordinator.core import lineage
from coordinator.core.values import CommitToken, Epoch, Scope, Slice, TimeBucket
from tests.contract.backfill_writers import make_job

pytestmark = pytest.mark.integration

DAY = datetime(2024, 3, 1, tzinfo=UTC)


def _docs() -> list[dict[str, object]]:
    # 48 rows, one per hour over two days: 24 inside the bucket (day one)
    return [
        {
            "order_id": i,
            "amount": float(i),
            "ts": (DAY + timedelta(hours=i)).isoformat().replace("+00:00", "Z"),
        }
        for i in range(48)
    ]


def _write(kind: str, root: Path) -> str:
    docs = _docs()
    if kind == "parquet":
        table = pa.table(
            {
                "order_id": pa.array([d["order_id"] for d in docs], pa.int64()),
                "amount": pa.array([d["amount"] for d in docs], pa.float64()),
                "ts": pa.array(
                    [DAY + timedelta(hours=i) for i in range(48)], pa.timestamp("ms", tz="UTC")
                ),
            }
        )
        pq.write_table(table, root / "a.parquet", row_group_size=10)
        return "a.parquet"
    if kind == "csv":
        lines = ["order_id,amount,ts", *[f"{d['order_id']},{d['amount']},{d['ts']}" for d in docs]]
        (root / "a.csv").write_text("\n".join(lines) + "\n")
        return "a.csv"
    (root / "a.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return "a.jsonl"


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
def test_reads_only_the_bucket_with_archive_lineage(kind: str, tmp_path: Path) -> None:
    job = make_job("iceberg-overwrite", tmp_path, "127.0.0.1:1", "t")
    name = _write(kind, tmp_path)
    bucket = TimeBucket(DAY, DAY + timedelta(days=1))
    rows = read_archive_slice(job, Slice("a", Scope("archive", bucket=bucket), files=(name,)))
    assert sorted(rows["order_id"].to_pylist()) == list(range(24))
    assert set(rows[lineage.SOURCE].to_pylist()) == {"archive"}
    assert rows[lineage.OFFSET].null_count == rows.num_rows


def test_archive_slice_runs_once_through_the_executor(tmp_path: Path) -> None:
    job = make_job("iceberg-overwrite", tmp_path, "127.0.0.1:1", "t")
    name = _write("parquet", tmp_path)
    bucket = TimeBucket(DAY, DAY + timedelta(days=1))
    slice_ = Slice("a-0301", Scope("archive", bucket=bucket), files=(name,))
    tok = CommitToken("contract", "a-0301", 1, Epoch(1), "backfill")
    first = execute_slice(job, slice_, tok)
    assert first.rows == 24 and not first.already_committed
    again = execute_slice(job, slice_, CommitToken("contract", "a-0301", 2, Epoch(1), "backfill"))
    assert again.already_committed and again.rows == 24


def test_a_stale_coordinator_cannot_commit(tmp_path: Path) -> None:
    """The runner's worker checks the epoch right before the table commit (DESIGN §3)."""
    from backfill.sinks import open_sink
    from coordinator.run.pool import run_one
    from coordinator.state.store import StateStore

    job = make_job("iceberg-overwrite", tmp_path, "127.0.0.1:1", "t")
    name = _write("parquet", tmp_path)
    bucket = TimeBucket(DAY, DAY + timedelta(days=1))
    slice_ = Slice("a-0301", Scope("archive", bucket=bucket), files=(name,))
    with StateStore(job.state_url()) as store:
        assert store.ensure_job(job.job_id) == 1
        store.bump_epoch(job.job_id)  # a newer coordinator took over
    ref = "backfill.executor:execute_slice"
    stale = run_one(ref, job, slice_, CommitToken("contract", "a-0301", 1, Epoch(1), "backfill"))
    assert stale.error is not None and "StaleEpochError" in stale.error
    assert not stale.retriable
    sink = open_sink(job)
    assert sink.scan().num_rows == 0 and sink.find_commit("contract", "a-0301") is None
    current = run_one(ref, job, slice_, CommitToken("contract", "a-0301", 1, Epoch(2), "backfill"))
    assert current.error is None and current.result is not None and current.result.rows == 24
    assert sink.scan().num_rows == 24
