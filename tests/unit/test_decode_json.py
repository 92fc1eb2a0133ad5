"""The JSON decoder: a batch decodes exactly as its records decode alone, and no record can raise.

Hypothesis feeds random and adversarial records (every bad record seen to stop the live
consumer: lone surrogates, integers beyond int64 or int32, deep nesting, timestamps past year
9999, invalid UTF-8, 1e300 into float32, NaN/Infinity, wrong types, missing required fields,
extra fields, empty and null values) and checks the rows and the quarantine of a batch equal
those of each record alone, and those of the per-record reference.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.core.fieldtypes import field_type
from stream.decode.base import RawMessage
from stream.decode.json import MAX_DEPTH, JsonDecoder, decode_batch
from stream.decode.transform import Transform, identity

REFERENCE = JsonDecoder(fast=False)

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("us", pa.timestamp("us", tz="UTC")),
        pa.field("name", pa.string()),
        pa.field("small", pa.int32()),
        pa.field("tiny", pa.int8()),
        pa.field("price", pa.float64()),
        pa.field("ratio", pa.float32()),
        pa.field("amount", pa.decimal128(18, 2)),
        pa.field("flag", pa.bool_()),
    ]
)
# The same fields plus the types only the per-record path decodes.
WIDE = pa.schema([*SCHEMA, pa.field("day", pa.date32()), pa.field("blob", pa.binary())])
# ... plus nested types (list, struct, map, nesting) with range-checked leaves.
NESTED = pa.schema(
    [
        *WIDE,
        pa.field("items", field_type("list<struct<sku: string, qty: int32, at: timestamp_us>>")),
        pa.field("prices", field_type("map<string, decimal(18,2)>")),
        pa.field("tags", field_type("list<list<int8>>")),
    ]
)

# ... and nested types the vectorised path decodes too (lists and structs of its scalars).
NESTED_FAST = pa.schema(
    [
        *SCHEMA,
        pa.field("items", field_type("list<struct<sku: string, qty: int32, at: timestamp_us>>")),
        pa.field("tags", field_type("list<list<int8>>")),
    ]
)
BAD_RECORDS: list[bytes | None] = [
    b'{"id":7,"name":"\\ud800","ts":1700000002000}',
    b'{"id":99999999999999999999,"ts":1700000002000}',
    b'{"id":1,"ts":1700000002000,"small":2147483648}',
    b'{"id":1,"ts":1700000002000,"tiny":128}',
    b'{"id":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b',"ts":1}',
    b'{"id":1,"x":' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b',"ts":1}',
    b'{"id":1,"x":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b',"ts":1}',
    b'{"id":1,"ts":253402300800000}',
    b'{"id":1,"ts":9223372036854775807,"us":9223372036854775}',
    b'{"id":1,"ts":"9999-12-31T23:30:00-05:00"}',
    b'{"id":3,"name":"c\xff\xfe","ts":1700000002000}',
    b'{"id":1,"ts":1,"ratio":1e300}',
    b'{"id":1,"ts":1,"price":1e400}',
    b'{"id":1,"ts":1,"price":NaN}',
    b'{"id":1,"ts":1,"price":-Infinity}',
    b'{"id":1,"ts":1,"amount":12.345}',
    b'{"id":1,"ts":1,"amount":"1e20"}',
    b'{"id":1,"ts":1,"amount":"NaN"}',
    b'{"id":1,"ts":1,"amount":" 1"}',
    b'{"id":1,"ts":1,"amount":12.34}',
    b'{"id":1,"ts":1,"amount":"12.34"}',
    b'{"id":1,"ts":1,"day":"2024-01-01","blob":"aGVsbG8="}',
    b'{"id":1,"ts":1,"day":"20240101","blob":"not base64!"}',
    b'{"id":1,"ts":1,"id":2}',
    b'{"i\\u0064":5,"ts":1}',
    b'\xef\xbb\xbf{"id":1,"ts":1}',
    b'{"id":1,"ts":1}\n',
    b'{"id":1,"ts":1} {"id":2,"ts":2}',
    b'{"id":1,"ts":1}{"id":2,"ts":2}',
    b'{"id":1,"ts":1,"name":"a\\u0000b"}',
    b'{"id":1.0,"ts":1}',
    b'{"id":true,"ts":1}',
    b'{"id":"1","ts":1}',
    b'{"ts":1}',
    b'{"id":null,"ts":1}',
    b'{"id":1,"ts":1,"extra":{"deep":[1,2,{"a":NaN}]}}',
    b'{"id":1,"ts":1,"x":' + b"1" * 5000 + b"}",
    b'{"id":1,"ts":1,"items":[{"sku":"a","qty":2147483648}]}',
    b'{"id":1,"ts":1,"items":[{"sku":"a","qty":1,"at":"2024-01-01T10:00:00+02:00","x":1},null]}',
    b'{"id":1,"ts":1,"items":[{"sku":"\\ud800"}]}',
    b'{"id":1,"ts":1,"items":{"sku":"a"}}',
    b'{"id":1,"ts":1,"items":[1]}',
    b'{"id":1,"ts":1,"prices":{"eur":12.34,"usd":"0.10","gbp":null}}',
    b'{"id":1,"ts":1,"prices":{"eur":12.345}}',
    b'{"id":1,"ts":1,"prices":{"eur":NaN}}',
    b'{"id":1,"ts":1,"prices":[1]}',
    b'{"id":1,"ts":1,"tags":[[1,2],[],null,[127]]}',
    b'{"id":1,"ts":1,"tags":[[128]]}',
    b'{"id":1,"ts":1,"tags":[1]}',
    b"[]",
    b"3",
    b"",
    b"  ",
    b"{",
    None,
]

_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.floats(width=32),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    st.text(alphabet="0123456789.+-eE ", max_size=8),
    st.text(max_size=6),
    st.dates().map(str),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.binary(max_size=6).map(lambda b: base64.b64encode(b).decode()),
    st.just([1]),
    st.just({"a": 1}),
    st.just([{"sku": 1}]),
    st.just([[300]]),
    st.just({"eur": "1.234"}),
    st.just([{"qty": 1.5}]),
)
_LEAF_INT = st.one_of(st.none(), st.integers(-(2**32), 2**32))
_GOOD: dict[str, st.SearchStrategy[Any]] = {
    "id": st.integers(-(2**63), 2**63 - 1),
    "ts": st.integers(-(2**45), 2**45),
    "us": st.one_of(st.none(), st.integers(0, 2**41)),
    "name": st.one_of(st.none(), st.text(max_size=8)),
    "small": st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    "tiny": st.one_of(st.none(), st.integers(-128, 127)),
    "price": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    "ratio": st.one_of(st.none(), st.floats(width=32, allow_nan=False, allow_infinity=False)),
    "amount": st.one_of(
        st.none(),
        st.decimals(-(10**15), 10**15, places=2).map(
            lambda d: json.loads(str(d), parse_float=Decimal)
        ),
        st.decimals(-(10**15), 10**15, places=2).map(str),
    ),
    "flag": st.one_of(st.none(), st.booleans()),
    "day": st.one_of(st.none(), st.dates().map(str)),
    "blob": st.one_of(st.none(), st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode())),
    "items": st.one_of(
        st.none(),
        st.lists(
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {},
                    optional={
                        "sku": st.one_of(st.none(), st.text(max_size=4)),
                        "qty": _LEAF_INT,
                        "at": st.one_of(
                            st.none(),
                            st.integers(-(2**45), 2**45),
                            st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
                        ),
                        "extra": st.integers(),
                    },
                ),
            ),
            max_size=3,
        ),
    ),
    "prices": st.one_of(
        st.none(),
        st.dictionaries(
            st.text(max_size=3),
            st.one_of(st.none(), st.decimals(-(10**6), 10**6, places=3).map(str)),
            max_size=3,
        ),
    ),
    "tags": st.one_of(
        st.none(), st.lists(st.one_of(st.none(), st.lists(_LEAF_INT, max_size=3)), max_size=3)
    ),
}


def _dump(doc: dict[str, Any], ascii_only: bool) -> bytes:
    text = json.dumps(doc, ensure_ascii=ascii_only, default=str)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate: invalid UTF-8


@st.composite
def _value(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["good"] * 5 + ["mutated", "missing", "raw", "extra", "null"]))
    doc: dict[str, Any] = {k: draw(v) for k, v in _GOOD.items()}
    if kind == "raw":
        return draw(st.sampled_from(BAD_RECORDS))
    if kind == "mutated":
        doc[draw(st.sampled_from(sorted(_GOOD)))] = draw(_ANY)
    elif kind == "missing":
        doc.pop(draw(st.sampled_from(sorted(_GOOD))))
    elif kind == "extra":
        doc["other"] = draw(_ANY)
    elif kind == "null":
        doc[draw(st.sampled_from(sorted(_GOOD)))] = None
    return _dump(doc, draw(st.booleans()))


def _fails_on_3(t: pa.Table) -> pa.Table:
    if pc.any(pc.equal(pc.bit_wise_and(t["id"], 7), 3)).as_py():
        raise ValueError("id ends in 3 (bits)")
    return t


def _alone_and_batch_agree(
    values: list[bytes | None], schema: pa.Schema, transform: Transform
) -> None:
    messages = [RawMessage(i % 3, 100 + i, v) for i, v in enumerate(values)]
    rows, bad = decode_batch(messages, schema, transform, "live")
    alone = [decode_batch([m], schema, transform, "live") for m in messages]
    assert rows.equals(pa.concat_tables([rows.slice(0, 0), *(t for t, _ in alone)]))
    assert [(q.partition, q.offset, q.error, q.raw) for q in bad] == [
        (q.partition, q.offset, q.error, q.raw) for _, qs in alone for q in qs
    ]
    ref_rows, ref_bad = REFERENCE.decode(messages, schema, transform, "live")
    assert rows.equals(ref_rows) and bad == ref_bad
    assert rows.num_rows + len(bad) == len(messages)  # every record: a row or quarantined


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_value(), max_size=40), st.sampled_from([SCHEMA, WIDE, NESTED, NESTED_FAST]))
def test_batch_equals_each_record_alone(values: list[bytes | None], schema: pa.Schema) -> None:
    _alone_and_batch_agree(values, schema, identity)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_value(), max_size=30))
def test_batch_equals_each_record_alone_with_a_failing_transform(
    values: list[bytes | None],
) -> None:
    _alone_and_batch_agree(values, SCHEMA, _fails_on_3)


def test_every_adversarial_record_in_one_batch_is_a_row_or_quarantined() -> None:
    _alone_and_batch_agree(BAD_RECORDS, WIDE, identity)
    _alone_and_batch_agree(BAD_RECORDS, NESTED, identity)
    _alone_and_batch_agree(BAD_RECORDS, NESTED_FAST, identity)
    _alone_and_batch_agree(BAD_RECORDS, SCHEMA, identity)


def _one(value: bytes, schema: pa.Schema = WIDE) -> tuple[dict[str, Any] | None, str | None]:
    rows, bad = decode_batch([RawMessage(0, 0, value)], schema, identity, "live")
    return (rows.to_pylist()[0] if rows.num_rows else None), (bad[0].error if bad else None)


def test_decimals_are_exact_from_numbers_and_strings() -> None:
    for text, expected in [
        (b"12.34", "12.34"),
        (b'"12.34"', "12.34"),
        (b"0.1", "0.10"),
        (b"123456789012.99", "123456789012.99"),
        (b"-0.00", "0.00"),
        (b'"1e2"', "100.00"),
        (b"9999999999999999.99", "9999999999999999.99"),
    ]:
        row, error = _one(b'{"id":1,"ts":1,"amount":' + text + b"}")
        assert error is None and row is not None
        assert row["amount"] == Decimal(expected) and str(row["amount"]) == expected
    for text in [b"12.345", b"10000000000000000.00", b'"abc"', b'"NaN"', b"true", b'"1,5"']:
        row, error = _one(b'{"id":1,"ts":1,"amount":' + text + b"}")
        assert row is None and error is not None and "field 'amount'" in error


def test_dates_binary_and_timestamps_decode_from_natural_json_forms() -> None:
    row, error = _one(
        b'{"id":1,"ts":"2024-03-01T10:00:00.123+01:00","us":"2024-03-01T09:00:00.123456Z",'
        b'"day":"2024-01-01","blob":"aGVsbG8="}'
    )
    assert error is None and row is not None
    assert str(row["day"]) == "2024-01-01" and row["blob"] == b"hello"
    assert row["ts"].isoformat() == "2024-03-01T09:00:00.123000+00:00"
    assert row["us"].isoformat() == "2024-03-01T09:00:00.123456+00:00"
    for bad_doc, field in [
        (b'{"id":1,"ts":"2024-03-01T25:00:00"}', "ts"),  # no such hour
        (b'{"id":1,"ts":1,"day":"2024-02-30"}', "day"),
        (b'{"id":1,"ts":1,"day":17000}', "day"),
        (b'{"id":1,"ts":1,"blob":"@@@"}', "blob"),
    ]:
        row, error = _one(bad_doc)
        assert row is None and error is not None and f"field {field!r}" in error


def test_nan_infinity_and_float_overflow_are_quarantined_not_stored() -> None:
    for doc in [b'"price":NaN', b'"price":Infinity', b'"price":1e400', b'"ratio":1e300']:
        row, error = _one(b'{"id":1,"ts":1,' + doc + b"}", SCHEMA)
        assert row is None and error is not None and ("finite" in error or "float32" in error)
    row, error = _one(b'{"id":1,"ts":1,"ratio":3.4e38,"price":1e308}', SCHEMA)
    assert error is None and row is not None and row["price"] == 1e308


def test_non_finite_keep_policy_stores_nan_and_infinity_constants_only() -> None:
    keep = {b"seamline.non_finite": b"keep"}
    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
            pa.field("price", pa.float64(), metadata=keep),
            pa.field("ratio", pa.float32(), metadata=keep),
        ]
    )
    values = [b'{"id":1,"ts":1,"price":NaN,"ratio":-Infinity}', b'{"id":2,"ts":1,"ratio":1e300}']
    messages = [RawMessage(0, i, v) for i, v in enumerate(values)]
    rows, bad = decode_batch(messages, schema, identity, "live")
    alone = [decode_batch([m], schema, identity, "live") for m in messages]
    assert repr(rows.to_pylist()) == repr([r for t, _ in alone for r in t.to_pylist()])  # NaN
    assert bad == [q for _, qs in alone for q in qs]
    [row] = rows.to_pylist()
    assert row["price"] != row["price"] and row["ratio"] == float("-inf")
    assert [q.offset for q in bad] == [1] and "float32" in bad[0].error


def test_zero_good_rows_gives_an_empty_table_with_the_schema() -> None:
    messages = [RawMessage(0, i, v) for i, v in enumerate([b"{", None, b'{"ts":1}'])]
    for transform in (identity, _fails_on_3):
        rows, bad = decode_batch(messages, SCHEMA, transform, "live")
        assert rows.num_rows == 0 and [q.offset for q in bad] == [0, 1, 2]
        assert rows.schema.names[: len(SCHEMA)] == SCHEMA.names
        assert rows.schema.field("amount").type == pa.decimal128(18, 2)


def test_a_transform_failing_on_the_batch_quarantines_only_its_culprits() -> None:
    docs = [{"id": i, "ts": i} for i in range(12)]
    messages = [RawMessage(0, i, json.dumps(d).encode()) for i, d in enumerate(docs)]
    rows, bad = decode_batch(messages, SCHEMA, _fails_on_3, "live")
    assert [q.offset for q in bad] == [3, 11]
    assert all(q.error.startswith("transform: ValueError") for q in bad)
    assert rows["id"].to_pylist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert rows["_kafka_offset"].to_pylist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]


def test_nested_values_decode_exactly_and_bad_leaves_quarantine_with_their_path() -> None:
    row, error = _one(
        b'{"id":1,"ts":"2024-01-01T10:00:00+02:00","us":"2024-01-01T10:00:00.123456789",'
        b'"items":[{"sku":"a","qty":2,"at":"2024-01-01T00:00:00Z","x":9},{"sku":"b"},null],'
        b'"prices":{"eur":12.34,"usd":"0.10","gbp":null},"tags":[[1,-2],[],null]}',
        NESTED,
    )
    assert error is None and row is not None
    assert row["ts"].isoformat() == "2024-01-01T08:00:00+00:00"  # offset applied
    assert row["us"].isoformat() == "2024-01-01T10:00:00.123456+00:00"  # naive: UTC; ns cut
    at = row["items"][0].pop("at")
    assert at.isoformat() == "2024-01-01T00:00:00+00:00"
    assert row["items"] == [
        {"sku": "a", "qty": 2},  # unknown "x" ignored
        {"sku": "b", "qty": None, "at": None},  # missing struct fields: null
        None,
    ]
    assert row["prices"] == [("eur", Decimal("12.34")), ("usd", Decimal("0.10")), ("gbp", None)]
    assert row["tags"] == [[1, -2], [], None]
    for doc, where in [
        (b'"items":[{"qty":1},{"qty":2147483648}]', "field 'items': [1].qty: expected an integer"),
        (b'"prices":{"eur":12.345}', "field 'prices': ['eur']: expected at most 2 decimal"),
        (b'"tags":[[1],[128]]', "field 'tags': [1][0]: expected an integer in [-128, 127]"),
        (b'"items":[{"at":"2024-13-01T00:00:00Z"}]', "field 'items': [0].at: expected an ISO"),
        (b'"items":{"sku":"a"}', "field 'items': expected a JSON array"),
        (b'"prices":[1]', "field 'prices': expected a JSON object"),
    ]:
        row, error = _one(b'{"id":1,"ts":1,' + doc + b"}", NESTED)
        assert row is None and error is not None and where in error, error
