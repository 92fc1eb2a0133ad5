"""Archive slices end to end on Iceberg and Lance: checksums of the archive bucket (files after
the transform) against the table's archive scope, business-key uniqueness across the table's
archive rows, and key-hash bisection naming the bucket and key of every difference."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from backfill.sinks import open_catalog
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import (
    CommitToken,
    Cut,
    Epoch,
    Offset,
    PartitionCut,
    PartitionId,
    Scope,
    Slice,
    TimeBucket,
)
from coordinator.service import reconcile
from coordinator.testing.pytest_plugin import TopicFactory
from reconcile.model import ReconcileReport
from reconcile.report import render_json, render_text
from tests.contract.backfill_writers import make_job

pytestmark = pytest.mark.integration

DAY = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 3
VICTIM = 30  # order_id 30 is in day 1 (hour 30 after DAY)


def _write_archive(root: Path) -> tuple[str, ...]:
    """One row per hour over three days, in two files (days 0-1, day 2), NaN and nulls."""
    n = 24 * DAYS
    amounts = [
        float("nan") if i % 7 == 0 else (None if i % 11 == 0 else i * 1.25) for i in range(n)
    ]
    table = pa.table(
        {
            "order_id": pa.array(range(n), pa.int64()),
            "amount": pa.array(amounts, pa.float64()),
            "ts": pa.array([DAY + timedelta(hours=i) for i in range(n)], pa.timestamp("ms", "UTC")),
        }
    )
    pq.write_table(table.slice(0, 48), root / "a-01.parquet", row_group_size=16)
    pq.write_table(table.slice(48), root / "a-02.parquet")
    return ("a-01.parquet", "a-02.parquet")


def _setup(fmt: str, root: Path, bootstrap: str, topic: str) -> tuple[JobSpec, Cut, list[Slice]]:
    job = make_job(f"{fmt}-overwrite", root, bootstrap, topic)
    # the archive carries NaN amounts on purpose: the job keeps non-finite floats (the
    # archive reader quarantines them by default, like the stream's decoder)
    job = job.model_copy(update={"schema_": job.schema_.model_copy(update={"non_finite": "keep"})})
    files = _write_archive(root)
    slices = [
        Slice(
            f"a-{d}",
            Scope(
                "archive", bucket=TimeBucket(DAY + timedelta(days=d), DAY + timedelta(days=d + 1))
            ),
            files=files,
        )
        for d in range(DAYS)
    ]
    from backfill.executor import execute_slice

    for s in slices:
        execute_slice(job, s, CommitToken(job.job_id, s.slice_id, 1, Epoch(1), "backfill"))
    cut = Cut(
        job.job_id, topic, (PartitionCut(PartitionId(0), Offset(0), Offset(0)),), DAY, Epoch(1)
    )
    return job, cut, slices


def _replace(job: JobSpec, data: pa.Table) -> None:
    """Write a corrupted copy of the whole table (the corruption under test)."""
    if job.table.format == "iceberg":
        open_catalog(job).load_table(str(job.table.identifier)).overwrite(data)
    else:
        lance.write_dataset(data, str(job.table.uri), mode="overwrite")


def _scan(job: JobSpec) -> pa.Table:
    from backfill.sinks import open_sink

    return open_sink(job).scan()


def _victim(t: pa.Table) -> pa.Table:
    return t.filter(pc.equal(t["order_id"], VICTIM))


def _others(t: pa.Table) -> pa.Table:
    return t.filter(pc.not_equal(t["order_id"], VICTIM))


def _with(t: pa.Table, column: str, value: Any) -> pa.Table:
    i = t.schema.get_field_index(column)
    field = t.schema.field(i)
    return t.set_column(i, field, pa.array([value] * t.num_rows, field.type))


Mutation = Callable[[pa.Table], pa.Table]
MUTATIONS: dict[str, tuple[Mutation, str, dict[str, int], int]] = {
    # name: (corruption, slice it must be localised to, drill-down counts, duplicated keys)
    "delete": (_others, "a-1", {"missing": 1}, 0),
    "duplicate": (lambda t: pa.concat_tables([t, _victim(t)]), "a-1", {"extra": 1}, 1),
    "modify": (
        lambda t: pa.concat_tables([_others(t), _with(_victim(t), "amount", -1.0)]),
        "a-1",
        {"changed": 1},
        0,
    ),
    "duplicate-in-another-bucket": (
        lambda t: pa.concat_tables([t, _with(_victim(t), "ts", DAY + timedelta(days=2, hours=5))]),
        "a-2",
        {"extra": 1},
        1,
    ),
}


def _check_clean(report: ReconcileReport) -> None:
    assert report.reconciled, report.to_json()
    assert [s.slice_id for s in report.slices] == ["a-0", "a-1", "a-2"]
    assert all(s.kind == "archive" and s.source.rows == 24 for s in report.slices)
    assert report.keys is not None and report.keys.ok
    assert (report.keys.domain, report.keys.rows) == ("archive", 72)


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_archive_mutations_are_localised_to_bucket_and_key(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    job, cut, slices = _setup(fmt, tmp_path, kafka_bootstrap, kafka_topic(1))

    def run() -> ReconcileReport:
        return reconcile(job, cut, slices, quarantine={})

    _check_clean(run())
    clean = _scan(job)
    for name, (mutate, slice_id, kinds, dup_keys) in MUTATIONS.items():
        _replace(job, mutate(clean))
        report = run()
        assert not report.reconciled, name
        assert [s.slice_id for s in report.mismatched] == [slice_id], name
        (bad,) = report.mismatched
        assert bad.drilldown is not None, name
        got = {k: getattr(bad.drilldown, k) for k in ("missing", "extra", "changed")}
        assert got == {k: kinds.get(k, 0) for k in got}, name
        assert [r.where for r in bad.drilldown.rows] == [{"order_id": VICTIM}] * sum(kinds.values())
        assert report.keys is not None and report.keys.duplicated == dup_keys, name
        if dup_keys:
            (sample,) = report.keys.samples
            assert (sample.key, sample.rows) == ({"order_id": VICTIM}, 2), name
            assert all(w["_seamline_source"] == "archive" for w in sample.where)
            doc = json.loads(render_json(report))
            assert doc["keys"]["samples"][0]["key"] == {"order_id": VICTIM}
            assert doc["totals"]["duplicate_keys"] == 1
            assert "duplicate key {'order_id': 30}: 2 rows" in render_text(report)
    _replace(job, clean)
    _check_clean(run())
