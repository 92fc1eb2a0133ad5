"""seamline-row-v1 over nested columns: canonical, and equal after a Parquet round trip."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.fieldtypes import field_type
from reconcile.checksum import checksum

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("items", field_type("list<struct<sku: string, qty: int32>>")),
        pa.field("prices", field_type("map<string, decimal(18,2)>")),
        pa.field("meta", field_type("struct<seen: list<timestamp_us>, day: date>")),
    ]
)
ROWS: list[list[Any]] = [
    [
        1,
        [{"sku": "a", "qty": 1}, None, {"sku": None, "qty": 2}],
        [("eur", Decimal("1.20")), ("usd", None)],
        {"seen": [1, 2], "day": date(2024, 1, 1)},
    ],
    [2, None, None, None],
    [3, [], [], {"seen": None, "day": None}],
]


def _table(rows: list[list[Any]], schema: pa.Schema = SCHEMA) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array([r[i] for r in rows], f.type) for i, f in enumerate(schema)], schema=schema
    )


def _parquet(table: pa.Table) -> pa.Table:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return pq.read_table(io.BytesIO(buf.getvalue()))


def test_nested_checksum_survives_parquet_and_slicing() -> None:
    t = _table(ROWS)
    back = _parquet(t)
    assert back.column("prices").type == SCHEMA.field("prices").type
    assert checksum(back) == checksum(t)
    assert checksum(t.slice(0, 1)) + checksum(t.slice(1)) == checksum(t)
    assert checksum(t.slice(2, 1)) == checksum(back.slice(2, 1))  # sliced nulls and offsets


def test_nested_checksum_canonical_forms() -> None:
    t = _table(ROWS)
    reordered_map = [list(r) for r in ROWS]
    reordered_map[0][2] = [("usd", None), ("eur", Decimal("1.20"))]
    assert checksum(_table(reordered_map)) == checksum(t)  # a map has no order
    large = t.set_column(
        1, "items", t["items"].cast(pa.large_list(SCHEMA.field("items").type.value_type))
    )
    assert checksum(large) == checksum(t)  # a table may read lists back as large lists


def test_nested_checksum_sees_every_change() -> None:
    base = checksum(_table(ROWS))
    changes: list[tuple[int, int, Any]] = [
        (0, 1, [None, {"sku": "a", "qty": 1}, {"sku": None, "qty": 2}]),  # list order
        (0, 1, [{"sku": "a", "qty": 1}, None]),  # one item fewer
        (0, 1, [{"sku": "a", "qty": 1}, None, {"sku": None, "qty": 3}]),  # a leaf
        (0, 2, [("eur", Decimal("1.21")), ("usd", None)]),  # a map value
        (0, 2, [("EUR", Decimal("1.20")), ("usd", None)]),  # a map key
        (0, 3, {"seen": [2, 1], "day": date(2024, 1, 1)}),  # nested list order
        (1, 1, []),  # null list vs empty list
        (2, 3, None),  # struct of nulls vs null struct
        (2, 2, None),  # empty map vs null map
    ]
    for row, col, value in changes:
        rows = [list(r) for r in ROWS]
        rows[row][col] = value
        assert checksum(_table(rows)) != base, (row, col, value)


def test_struct_fields_swapped_between_names_change_the_hash() -> None:
    schema = pa.schema([pa.field("s", field_type("struct<a: int64, b: int64>"))])
    assert checksum(_table([[{"a": 1, "b": 2}]], schema)) != checksum(
        _table([[{"a": 2, "b": 1}]], schema)
    )


NESTED_GOLDEN = {
    "scheme": "seamline-row-v1",
    "rows": 3,
    "sum": "97fda407fddeef81",
    "xor": "6b9a58180200e757",
}


def test_nested_golden() -> None:
    assert checksum(_table(ROWS)).to_json() == NESTED_GOLDEN


leaf = st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))
nested_rows = st.lists(
    st.tuples(
        st.one_of(st.none(), st.lists(leaf, max_size=4)),
        st.one_of(
            st.none(),
            st.dictionaries(st.text(max_size=3), leaf, max_size=3).map(lambda d: list(d.items())),
        ),
        st.one_of(st.none(), st.fixed_dictionaries({"a": leaf, "b": st.lists(leaf, max_size=2)})),
    ),
    max_size=12,
)
PROP_SCHEMA = pa.schema(
    [
        pa.field("l", field_type("list<int32>")),
        pa.field("m", field_type("map<string, int32>")),
        pa.field("s", field_type("struct<a: int32, b: list<int32>>")),
    ]
)


@settings(max_examples=60, deadline=None)
@given(nested_rows, st.integers(0, 12))
def test_nested_checksum_round_trips_and_splits(rows: list[tuple[Any, ...]], cut: int) -> None:
    t = _table([list(r) for r in rows], PROP_SCHEMA)
    assert checksum(_parquet(t)) == checksum(t)
    cut = min(cut, len(rows))
    assert checksum(t.slice(0, cut)) + checksum(t.slice(cut)) == checksum(t)
