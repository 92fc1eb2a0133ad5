"""Per-slice assertions on Arrow tables (pure): each check passes on good rows and fails with
a message naming the slice, the check, what was expected and what was found; bad
``[[backfill.assert]]`` entries are refused when the job file is loaded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from backfill.assertions import check_slice
from coordinator.core.errors import ConfigError, SliceAssertionError
from coordinator.core.jobspec import JobSpec, parse_job
from coordinator.core.values import (
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
    Slice,
    TimeBucket,
)

DAY = datetime(2024, 1, 1, tzinfo=UTC)
KAFKA = Slice(
    "k-p0-000000000-000000010",
    Scope("kafka", (OffsetRange(PartitionId(0), Offset(0), Offset(10)),)),
)
ARCHIVE = Slice("a-day-20240101", Scope("archive", bucket=TimeBucket(DAY, DAY + timedelta(days=3))))


def job(*asserts: dict[str, Any]) -> JobSpec:
    doc = {
        "stream": {"bootstrap": "127.0.0.1:9092", "topic": "orders"},
        "schema": {
            "event_time": "ts",
            "fields": {
                "order_id": "int64",
                "amount": "float64",
                "ts": "timestamp_ms",
                "c": "string",
            },
        },
        "table": {"format": "lance", "uri": "t.lance"},
        "backfill": {"assert": list(asserts)},
    }
    return parse_job(doc, base_dir=Path("/nonexistent-seamline"), default_id="orders")


def rows(ids: list[int], amounts: list[float | None], days: list[int]) -> pa.Table:
    return pa.table({
        "order_id": pa.array(ids, pa.int64()),
        "amount": pa.array(amounts, pa.float64()),
        "ts": pa.array([DAY + timedelta(days=d, hours=1) for d in days], pa.timestamp("ms", "UTC")),
        "c": pa.array(["x"] * len(ids)),
    })  # fmt: skip


GOOD = rows([1, 2, 3], [1.0, 2.0, None], [0, 1, 2])


def fails(spec: dict[str, Any], data: pa.Table, slice_: Slice = KAFKA) -> str:
    check_slice(job(), slice_, data)  # no assertions: always passes
    with pytest.raises(SliceAssertionError) as info:
        check_slice(job(spec), slice_, data)
    assert not info.value.transient  # terminal: the runner does not retry it
    return str(info.value)


def test_min_rows() -> None:
    check_slice(job({"check": "min_rows", "min": 3}), KAFKA, GOOD)
    msg = fails({"check": "min_rows", "min": 4}, GOOD)
    assert (
        "slice_id=k-p0-000000000-000000010 check=min_rows: expected rows >= 4, found rows=3" in msg
    )
    assert "not committed" in msg


def test_min_rows_per_day_counts_every_day_of_an_archive_bucket() -> None:
    check_slice(job({"check": "min_rows_per_day", "min": 1}), ARCHIVE, GOOD)
    gap = rows([1, 2], [1.0, 1.0], [0, 2])  # nothing on 2024-01-02
    msg = fails({"check": "min_rows_per_day", "min": 1}, gap, ARCHIVE)
    assert "expected rows >= 1 per day, found rows=0 on 2024-01-02" in msg
    # a Kafka slice: the days from the first to the last event day found
    assert "on 2024-01-02" in fails({"check": "min_rows_per_day", "min": 1}, gap, KAFKA)
    check_slice(job({"check": "min_rows_per_day", "min": 1}), KAFKA, rows([1], [1.0], [5]))


def test_max_null_rate() -> None:
    check_slice(job({"check": "max_null_rate", "column": "amount", "max": 0.34}), KAFKA, GOOD)
    msg = fails({"check": "max_null_rate", "column": "amount", "max": 0.3}, GOOD)
    assert (
        "check=max_null_rate[amount]: expected null rate <= 0.3, found null rate=0.333333 (1/3)"
        in msg
    )


def test_range_ignores_nulls_and_names_what_is_outside() -> None:
    check_slice(job({"check": "range", "column": "amount", "min": 1, "max": 2}), KAFKA, GOOD)
    msg = fails({"check": "range", "column": "order_id", "max": 2}, GOOD)
    assert (
        "check=range[order_id]: expected values <= 2, found 1 values outside (min=1, max=3)" in msg
    )
    assert "expected values >= 2 and <= 3" in fails(
        {"check": "range", "column": "order_id", "min": 2, "max": 3}, GOOD
    )


def test_unique() -> None:
    check_slice(job({"check": "unique", "column": "order_id"}), KAFKA, GOOD)
    dup = rows([7, 7, 8, None], [1.0] * 4, [0] * 4)  # type: ignore[list-item]
    msg = fails({"check": "unique", "column": "order_id", "name": "one row per order"}, dup)
    assert (
        "check=one row per order: expected unique values, found 1 duplicated values (e.g. 7)" in msg
    )


def never_negative(table: pa.Table) -> str | None:
    """A custom check used by the tests (also from tests/integration)."""
    low = [a for a in table.column("amount").to_pylist() if a is not None and a < 0]
    return f"{len(low)} negative amounts" if low else None


def test_custom_check() -> None:
    ref = "tests.unit.test_assertions:never_negative"
    check_slice(job({"check": "custom", "function": ref}), KAFKA, GOOD)
    msg = fails({"check": "custom", "function": ref}, rows([1], [-5.0], [0]))
    assert "check=custom: expected the custom check to pass, found 1 negative amounts" in msg


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"check": "min_rows"}, "check 'min_rows' needs ['min']"),
        (
            {"check": "unique", "column": "order_id", "max": 1},
            "takes ['column'], found also ['max']",
        ),
        ({"check": "range", "column": "amount"}, "needs ['min or max']"),
        (
            {"check": "range", "column": "c", "max": 1},
            "expected a numeric column for check 'range', found 'c'",
        ),
        (
            {"check": "unique", "column": "nope"},
            "key=backfill.assert[0].column: unknown column 'nope'",
        ),
        ({"check": "max_null_rate", "column": "amount", "max": 2}, "expected 0 <= max <= 1"),
        ({"check": "custom", "function": "not a ref"}, "expected module.path:function"),
        ({"check": "min_rowz", "min": 1}, "key=backfill.assert.0.check"),
        ({"check": "min_rows", "min": 1, "colum": "x"}, "unknown key (did you mean 'column'?)"),
    ],
)
def test_bad_assertions_are_refused_when_the_job_loads(spec: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as info:
        job(spec)
    assert error in str(info.value)
