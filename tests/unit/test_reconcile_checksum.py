"""Checksum scheme seamline-row-v1: order independence, canonicalisation, sensitivity."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.errors import ReconcileError
from reconcile.checksum import SCHEME, Checksum, ChecksumAccumulator, checksum, mix, mix_int

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("price", pa.float64()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("amount", pa.decimal128(18, 2)),
        ("ok", pa.bool_()),
    ]
)

floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64))
rows_st = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        st.one_of(st.none(), st.text(max_size=12)),
        floats,
        st.one_of(st.none(), st.integers(-(2**50), 2**50)),
        st.one_of(st.none(), st.integers(-(10**15), 10**15)),
        st.one_of(st.none(), st.booleans()),
    ),
    min_size=1,
    max_size=40,
)


def _table(rows: list[tuple[Any, ...]]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    arrays = [
        pa.array(cols[0], pa.int64()),
        pa.array(cols[1], pa.string()),
        pa.array(cols[2], pa.float64()),
        pa.array(cols[3], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array([None if v is None else Decimal(v).scaleb(-2) for v in cols[4]], SCHEMA[4].type),
        pa.array(cols[5], pa.bool_()),
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


@settings(max_examples=60, deadline=None)
@given(rows=rows_st, data=st.data())
def test_permutation_and_batching_do_not_change_the_checksum(
    rows: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    perm = data.draw(st.permutations(range(len(rows))))
    base = checksum(_table(rows))
    shuffled = _table([rows[i] for i in perm])
    acc = ChecksumAccumulator()
    for batch in shuffled.to_batches(max_chunksize=7):
        acc.update(batch)
    assert checksum(shuffled) == base
    assert acc.value == base
    assert base.rows == len(rows) and base.scheme == SCHEME


def _changed(value: Any, col: int) -> Any:
    if value is None:
        return {0: 0, 1: "", 2: 0.0, 3: 0, 4: 0, 5: False}[col]
    if col == 1:
        return value + "x"
    if col == 2:
        return None if math.isnan(value) else (value + 1.0 if math.isfinite(value) else 0.0)
    if col == 5:
        return not value
    return value - 1 if value > 0 else value + 1


@settings(max_examples=120, deadline=None)
@given(rows=rows_st, data=st.data())
def test_any_single_flipped_value_changes_the_checksum(
    rows: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    r = data.draw(st.integers(0, len(rows) - 1))
    c = data.draw(st.integers(0, 5))
    row = list(rows[r])
    new = _changed(row[c], c)
    if c == 2 and new is not None and row[c] is not None and new == row[c]:
        new = None  # e.g. huge floats where +1.0 is absorbed
    row[c] = new
    mutated = [*rows[:r], tuple(row), *rows[r + 1 :]]
    before, after = checksum(_table(rows)), checksum(_table(mutated))
    assert before.sum != after.sum and before.xor != after.xor


def test_equal_after_canonicalisation_hashes_equal() -> None:
    nan_a = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]
    nan_b = struct.unpack("<d", struct.pack("<Q", 0xFFF0000000000123))[0]
    left = pa.table(
        {
            "ts": pa.array([1_700_000_000_123, None], pa.timestamp("ms", tz="UTC")),
            "f": pa.array([-0.0, nan_a], pa.float64()),
            "i": pa.array([7, None], pa.int32()),
            "s": pa.array(["é", None], pa.string()),
        }
    )
    right = pa.table(
        {
            "s": pa.array(["é", None], pa.large_string()),
            "i": pa.array([7, None], pa.int64()),
            "f": pa.array([0.0, nan_b], pa.float32()).cast(pa.float64()),
            "ts": pa.array([1_700_000_000_123_000, None], pa.timestamp("us", tz="Asia/Tokyo")),
        }
    )
    ns = left.set_column(
        0, "ts", pa.array([1_700_000_000_123_000_999, None], pa.timestamp("ns", tz="UTC"))
    )
    assert checksum(left) == checksum(right) == checksum(ns)


def test_side_column_is_excluded_and_nulls_differ_from_values() -> None:
    a = pa.table({"x": [1], "_seamline_side": ["backfill"]})
    b = pa.table({"x": [1], "_seamline_side": ["live"]})
    assert checksum(a) == checksum(b)
    for typ, value in [(pa.int64(), 0), (pa.string(), ""), (pa.float64(), 0.0)]:
        assert checksum(pa.table({"x": pa.array([None], typ)})) != checksum(
            pa.table({"x": pa.array([value], typ)})
        )


def test_value_in_another_column_changes_the_checksum() -> None:
    assert checksum(pa.table({"a": [1], "b": [2]})) != checksum(pa.table({"a": [2], "b": [1]}))


def test_mix_matches_reference_and_json_round_trips() -> None:
    import numpy as np

    xs = [0, 1, 2**63, 2**64 - 1, 0x123456789ABCDEF]
    assert [int(v) for v in mix(np.array(xs, dtype=np.uint64))] == [mix_int(x) for x in xs]
    c = checksum(pa.table({"x": [1, 2, 3]}))
    assert Checksum.from_json(json.loads(json.dumps(c.to_json()))) == c
    assert (c + Checksum()) == c


def test_union_columns_are_refused() -> None:
    union = pa.UnionArray.from_sparse(
        pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])]
    )
    with pytest.raises(ReconcileError, match="column=u"):
        checksum(pa.table({"u": union}))


GOLDEN_SCRIPT = """
import pyarrow as pa, json
from reconcile.checksum import checksum
t = pa.table({"id": [1, 2, None], "s": ["a", "bc", None], "f": [0.5, float("nan"), -0.0]})
print(json.dumps(checksum(t).to_json()))
"""


def test_checksum_is_stable_across_processes_and_matches_golden() -> None:
    outs = {
        subprocess.run(
            [sys.executable, "-c", GOLDEN_SCRIPT], check=True, capture_output=True, text=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(outs) == 1
    doc = json.loads(outs.pop())
    t = pa.table({"id": [1, 2, None], "s": ["a", "bc", None], "f": [0.5, float("nan"), -0.0]})
    assert doc == checksum(t).to_json()
    assert doc == GOLDEN


GOLDEN = {
    "scheme": "seamline-row-v1",
    "rows": 3,
    "sum": "9ec15e30385d31fb",
    "xor": "5d3ca3d4c9035265",
}
