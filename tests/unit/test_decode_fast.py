"""The vectorised decode path returns exactly what the per-record reference returns."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.decode.base import RawMessage
from stream.decode.json import JsonDecoder, decode_batch, decode_columns
from stream.decode.transform import identity

REFERENCE = JsonDecoder(fast=False)

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("us", pa.timestamp("us", tz="UTC")),
        pa.field("name", pa.string()),
        pa.field("small", pa.int32()),
        pa.field("price", pa.float64()),
        pa.field("flag", pa.bool_()),
    ]
)

NESTED = pa.schema(
    [
        *SCHEMA,
        pa.field(
            "items",
            pa.list_(
                pa.struct([("sku", pa.string()), ("qty", pa.int32()), ("amt", pa.decimal128(6, 2))])
            ),
        ),
        pa.field("tags", pa.list_(pa.list_(pa.int8()))),
        pa.field("at", pa.struct([("ts", pa.timestamp("ms", tz="UTC")), ("r", pa.float32())])),
    ]
)
_LEAF = st.one_of(st.none(), st.integers(-(2**33), 2**33))
_NESTED_GOOD = {
    "items": st.one_of(
        st.none(),
        st.lists(
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {},
                    optional={
                        "sku": st.one_of(st.none(), st.text(max_size=3)),
                        "qty": _LEAF,
                        "amt": st.one_of(
                            st.none(), st.decimals(-(10**5), 10**5, places=3).map(str)
                        ),
                        "x": st.integers(),
                    },
                ),
            ),
            max_size=3,
        ),
    ),
    "tags": st.one_of(st.none(), st.lists(st.one_of(st.none(), st.lists(_LEAF, max_size=3)))),
    "at": st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {},
            optional={
                "ts": st.one_of(st.none(), st.integers(-(2**48), 2**48)),
                "r": st.one_of(st.none(), st.floats(allow_nan=False, width=64)),
            },
        ),
    ),
}
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.just("2024-01-01T00:00:00+00:00"),
    st.just([1]),
    st.just({"a": 1}),
)
_GOOD = {
    "id": st.integers(-(2**62), 2**62),
    "ts": st.integers(0, 2**41),
    "us": st.one_of(st.none(), st.integers(0, 2**41)),
    "name": st.one_of(st.none(), st.text(max_size=8)),
    "small": st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    "price": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    "flag": st.one_of(st.none(), st.booleans()),
}


@st.composite
def _value(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["good"] * 6 + ["mutated", "missing", "raw", "extra"]))
    doc: dict[str, Any] = {k: draw(v) for k, v in _GOOD.items()}
    if kind == "mutated":
        doc[draw(st.sampled_from(sorted(_GOOD)))] = draw(_ANY)
    elif kind == "missing":
        doc.pop(draw(st.sampled_from(sorted(_GOOD))))
    elif kind == "extra":
        doc["other"] = draw(_ANY)
    elif kind == "raw":
        return draw(
            st.sampled_from(
                [
                    None,
                    b"",
                    b"  ",
                    b"{",
                    b"[1,2]",
                    b"3",
                    b'{"id": 1,\n "ts": 2}',
                    b'{"id": 1, "ts": 1}{"id": 2, "ts": 2}',
                    b'{"id": 1, "ts": 1} {"id": 2}',
                ]
            )
        )
    return json.dumps(doc).encode()


def _same(
    messages: list[RawMessage], transform: Any = identity, schema: pa.Schema = SCHEMA
) -> None:
    slow = REFERENCE.decode(messages, schema, transform, "live")  # never raises for a record
    columns = (
        [m.partition for m in messages],
        [m.offset for m in messages],
        [m.value for m in messages],
    )
    for fast in (
        decode_batch(messages, schema, transform, "live"),
        decode_columns(*columns, schema, transform, "live"),
    ):
        assert fast[0].schema == slow[0].schema
        assert fast[0].equals(slow[0])
        assert repr(fast[0].to_pylist()) == repr(slow[0].to_pylist())  # -0.0 is not 0.0 here
        assert fast[1] == slow[1]


@settings(max_examples=300, deadline=None)
@given(st.lists(_value(), max_size=30))
def test_fast_path_equals_reference(values: list[bytes | None]) -> None:
    _same([RawMessage(i % 3, 10 + i, v) for i, v in enumerate(values)])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.fixed_dictionaries(_GOOD), min_size=1, max_size=30))
def test_fast_path_equals_reference_on_clean_batches(docs: list[dict[str, Any]]) -> None:
    _same([RawMessage(0, i, json.dumps(d).encode()) for i, d in enumerate(docs)])


def test_fast_path_equals_reference_with_a_failing_transform() -> None:
    def fails_on_7(t: pa.Table) -> pa.Table:
        if pc.any(pc.equal(t["id"], 7)).as_py():
            raise ValueError("id 7")
        return t

    docs = [{"id": i, "ts": i, "name": "x"} for i in range(12)]
    _same([RawMessage(0, i, json.dumps(d).encode()) for i, d in enumerate(docs)], fails_on_7)


@st.composite
def _nested_value(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {k: draw(v) for k, v in {**_GOOD, **_NESTED_GOOD}.items()}
    if draw(st.booleans()):
        doc[draw(st.sampled_from(sorted(_NESTED_GOOD)))] = draw(
            st.one_of(_ANY, st.just([{"qty": "1"}]), st.just([[1.5]]), st.just({"r": 1e300}))
        )
    return json.dumps(doc).encode()


@settings(max_examples=150, deadline=None)
@given(st.lists(_nested_value(), max_size=30))
def test_fast_path_equals_reference_on_nested_lists_and_structs(values: list[bytes]) -> None:
    _same([RawMessage(0, i, v) for i, v in enumerate(values)], schema=NESTED)


def test_clean_nested_batches_take_the_vectorised_path() -> None:
    from stream.decode.json import _fast, fast_supported

    docs = [
        {"id": i, "ts": i, "items": [{"sku": "a", "qty": i, "amt": "1.50"}, None],
         "tags": [[1], []], "at": {"ts": i, "r": 0.5}}
        for i in range(50)
    ]  # fmt: skip
    values = [json.dumps(d).encode() for d in docs]
    assert fast_supported(NESTED)
    table, _, suspects = _fast(values, NESTED)
    assert suspects == [] and table.num_rows == 50
    assert not fast_supported(pa.schema([pa.field("m", pa.map_(pa.string(), pa.int64()))]))
