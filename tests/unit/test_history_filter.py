"""The ``[history] where`` grammar (pure): typed conditions become pyarrow compute
expressions that select the right rows; bad conditions are refused when the job loads."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from coordinator.core.controls import apply_where
from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec, parse_job


def job(*where: dict[str, Any]) -> JobSpec:
    doc = {
        "stream": {"bootstrap": "127.0.0.1:9092", "topic": "orders"},
        "schema": {
            "event_time": "ts",
            "fields": {
                "id": "int64",
                "amount": "float64",
                "ts": "timestamp_ms",
                "region": "string",
                "day": "date",
            },
        },
        "table": {"format": "lance", "uri": "t.lance"},
        "history": {"where": list(where)},
    }
    return parse_job(doc, base_dir=Path("/nonexistent-seamline"), default_id="orders")


ROWS = pa.table({
    "id": pa.array([1, 2, 3, 4], pa.int64()),
    "amount": pa.array([5.0, 50.0, None, 500.0]),
    "ts": pa.array([datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3, 4)], pa.timestamp("ms", "UTC")),
    "region": pa.array(["eu", "us", "eu", None]),
    "day": pa.array([datetime(2024, 1, d).date() for d in (1, 2, 3, 4)], pa.date32()),
})  # fmt: skip


def ids(*where: dict[str, Any]) -> list[int]:
    out: list[int] = apply_where(ROWS, job(*where).history_filter())["id"].to_pylist()
    return out


def test_no_filter_keeps_every_row() -> None:
    assert job().history_filter() is None and ids() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ([{"column": "amount", "op": ">=", "value": 50}], [2, 4]),  # an int for a float column
        ([{"column": "amount", "op": "<", "value": 50.0}], [1]),  # null does not match
        ([{"column": "region", "op": "==", "value": "eu"}], [1, 3]),
        ([{"column": "region", "op": "!=", "value": "eu"}], [2]),
        ([{"column": "region", "op": "in", "value": ["us", "xx"]}], [2]),
        ([{"column": "id", "op": "not in", "value": [1, 2]}], [3, 4]),
        ([{"column": "region", "op": "is null"}], [4]),
        ([{"column": "amount", "op": "is not null"}], [1, 2, 4]),
        ([{"column": "ts", "op": ">", "value": datetime(2024, 1, 2, tzinfo=UTC)}], [3, 4]),
        ([{"column": "ts", "op": "<=", "value": "2024-01-02T00:00:00Z"}], [1, 2]),  # ISO text
        ([{"column": "day", "op": "==", "value": "2024-01-03"}], [3]),
        (
            [
                {"column": "region", "op": "==", "value": "eu"},
                {"column": "id", "op": ">", "value": 1},
            ],
            [3],
        ),
        ([{"column": "region", "op": "==", "value": "x' OR 1=1 --"}], []),  # a value, not SQL
    ],
)
def test_conditions_select_rows(where: list[dict[str, Any]], expected: list[int]) -> None:
    assert ids(*where) == expected


@pytest.mark.parametrize(
    ("cond", "error"),
    [
        ({"column": "nope", "op": "==", "value": 1}, "key=history.where[0]: unknown column 'nope'"),
        (
            {"column": "id", "op": "==", "value": "abc"},
            "history.where[0]: expected a value of type int64, found 'abc'",
        ),
        ({"column": "id", "op": "==", "value": 1.5}, "expected a value of type int64, found 1.5"),
        ({"column": "id", "op": "==", "value": True}, "expected a value of type int64, found True"),
        ({"column": "id", "op": "=~", "value": 1}, "key=history.where.0.op"),
        ({"column": "id", "op": "in", "value": 1}, "needs a non-empty list value"),
        ({"column": "id", "op": "is null", "value": 1}, "takes no value"),
        ({"column": "id", "op": "=="}, "needs one value"),
        (
            {"column": "id", "op": "==", "value": 1, "vlaue": 2},
            "unknown key (did you mean 'value'?)",
        ),
    ],
)
def test_bad_conditions_are_refused(cond: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as info:
        job(cond)
    assert error in str(info.value)
