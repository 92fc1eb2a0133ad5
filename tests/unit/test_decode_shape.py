"""Flat records of one shape (stream.decode.json_shape) decode exactly as the per-record reference.

The records are written by hand, literal by literal, so the shape path meets what a JSON
encoder never writes: "-0" and "1e400" for floats, 19-digit integers, decimals with trailing
zeros or one digit too many, strings holding quotes, commas, colons or "null", any JSON
whitespace between tokens, keys the schema does not use, missing keys.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.decode import json as json_decoder
from stream.decode.json import JsonDecoder, decode_columns
from stream.decode.json_shape import parse_shapes, shape_of
from stream.decode.transform import identity

REFERENCE = JsonDecoder(fast=False)

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("us", pa.timestamp("us", tz="UTC")),
        pa.field("small", pa.int32()),
        pa.field("price", pa.float64()),
        pa.field("ratio", pa.float32()),
        pa.field("amount", pa.decimal128(6, 2)),
        pa.field("whole", pa.decimal128(4, 0)),
        pa.field("name", pa.string()),
        pa.field("flag", pa.bool_()),
    ]
)

_FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        ["-0", "-0.0", "0", "-0e3", "1e400", "-1e400", "1e-400", "3.4028235e38", "3.5e38",
         "0.1000000000000000055511151231257827", "123456789012345678901234567890", "1E5",
         "2.5e-3", "null"]
    ),
)  # fmt: skip
_TEXT = st.text(
    st.characters(exclude_characters='"\\', exclude_categories=["Cs", "Cc"]), max_size=6
)
# Literals the shape grammar accepts (edge cases included) ...
_GOOD: dict[str, st.SearchStrategy[str]] = {
    "id": st.one_of(st.integers(-(2**63), 2**63 - 1).map(str), st.just("-0")),
    "ts": st.one_of(st.integers(-(2**45), 2**48).map(str), st.just("253402300800000")),
    "us": st.one_of(st.integers(-(2**45), 2**45).map(str), st.just("null")),
    "small": st.one_of(st.integers(-(2**31) - 2, 2**31 + 1).map(str), st.just("null")),
    "price": _FLOATS,
    "ratio": _FLOATS,
    "amount": st.one_of(
        st.decimals(-(10**4), 10**4, places=2).map(str),
        st.sampled_from(["9999.99", "-0.00", "0", "-0", "null"]),
    ),
    "whole": st.one_of(st.integers(-9999, 9999).map(str), st.sampled_from(["-0", "null"])),
    "name": st.one_of(
        _TEXT.map(lambda s: json.dumps(s, ensure_ascii=False)),
        st.sampled_from(['"a,b: null}"', "\"{'x': 1, [y]}\"", '"null"', '""']),
    ),
    "flag": st.sampled_from(["true", "false", "null"]),
}
# ... and literals it leaves to Arrow's reader (and the reference).
_ODD: dict[str, st.SearchStrategy[str]] = {
    "id": st.sampled_from(["1.0", "1e2", "null", '"5"', "99999999999999999999", "00", "- 1"]),
    "ts": st.sampled_from(['"2024-01-01T00:00:00Z"', "1.5", "null"]),
    "us": st.sampled_from(['"2024-01-01"', "true"]),
    "small": st.sampled_from(["false", "1.0", "+1"]),
    "price": st.sampled_from(["NaN", "true", '"1.5"', "-Infinity", ".5", "1."]),
    "ratio": st.sampled_from(["Infinity", "[]"]),
    "amount": st.sampled_from(["1.230", "10000", "0.001", "1e2", '"1.50"', "12.345"]),
    "whole": st.sampled_from(["1.0", "10000", "1e3"]),
    "name": st.one_of(
        st.text(max_size=6).map(json.dumps),
        st.sampled_from(['"a\\"b"', '"\\ud800"', '"\\n"', "1", '"tab\tin"']),
    ),
    "flag": st.sampled_from(["1", '"true"', "True"]),
}
_KEYS = list(_GOOD)
_WHITESPACE = st.sampled_from(["", " ", "\t", "\n", " \r\n "])
Spacing = tuple[str, str, str, str]  # around the braces, before ":", after ":", after ","
_SPACING = st.one_of(
    st.sampled_from([("", "", "", ""), ("", "", " ", " ")]),  # compact; json.dumps's default
    st.tuples(_WHITESPACE, _WHITESPACE, _WHITESPACE, _WHITESPACE),
)


@st.composite
def _record(draw: st.DrawFn, keys: list[str], spacing: Spacing) -> bytes:
    """One record: mostly the batch's keys, values and spacing, sometimes not."""
    if draw(st.integers(0, 9)) == 0:
        keys = draw(st.permutations([k for k in keys if draw(st.booleans())]))
    pairs = [
        (json.dumps(k), draw(_ODD[k] if draw(st.integers(0, 39)) == 0 else _GOOD[k])) for k in keys
    ]
    if draw(st.integers(0, 9)) == 0:
        other = draw(st.sampled_from(["1", '"x"', "null", "[1]", '{"a": 1}', "-0", '"y,z"']))
        pairs.insert(draw(st.integers(0, len(pairs))), ('"other"', other))
    brace, before, after, comma = spacing if draw(st.integers(0, 9)) else draw(_SPACING)
    body = ("," + comma).join(k + before + ":" + after + v for k, v in pairs)
    return ("{" + brace + body + brace + "}").encode()


@st.composite
def _batch(draw: st.DrawFn) -> list[bytes]:
    keys = [k for k in _KEYS if draw(st.integers(0, 9)) > 0]  # some keys absent batch-wide
    spacing = draw(_SPACING)
    return draw(st.lists(_record(keys, spacing), min_size=1, max_size=40))


def _same(values: list[Any], schema: pa.Schema = SCHEMA) -> pa.Table:
    n = len(values)
    parts, offsets = [0] * n, list(range(n))
    fast = decode_columns(parts, offsets, values, schema, identity, "live")
    slow = REFERENCE.decode_columns(parts, offsets, values, schema, identity, "live")
    assert fast[0].schema == slow[0].schema
    assert fast[0].equals(slow[0]), (fast[0].to_pylist(), slow[0].to_pylist())
    assert repr(fast[0].to_pylist()) == repr(slow[0].to_pylist())  # -0.0 is not 0.0 here
    assert fast[1] == slow[1]
    table: pa.Table = fast[0]
    return table


@settings(max_examples=400, deadline=None)
@given(_batch())
def test_shaped_records_decode_as_the_reference(values: list[bytes]) -> None:
    _same(values)


@settings(max_examples=100, deadline=None)
@given(
    _batch(),
    st.lists(
        st.sampled_from(
            [None, b"", b"{", b"\xff{}", b'{"id":1}{"id":2}', b'{"id": 1, "ts": 2, "name": "\xff"}']
        )
    ),
)
def test_shaped_records_around_bad_ones_decode_as_the_reference(
    values: list[bytes], bad: list[bytes | None]
) -> None:
    _same(bad[: len(bad) // 2] + values + bad[len(bad) // 2 :])


def _orders(n: int) -> list[bytes]:
    return [
        json.dumps({"id": i, "ts": 1_700_000_000_000 + i, "small": i % 7, "price": i / 4,
                    "amount": f"{i % 100}.25", "name": f"n,{i}:", "flag": i % 2 == 0}
                   ).replace('"amount": "', '"amount": ').replace('.25"', ".25").encode()
        for i in range(n)
    ]  # fmt: skip


def test_a_clean_flat_batch_never_reaches_arrows_json_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_: Any, **__: Any) -> pa.Table:
        raise AssertionError("the shape path should have parsed every record")

    monkeypatch.setattr(pajson, "read_json", refuse)
    table = _same(_orders(1000))
    assert table.num_rows == 1000
    assert (
        table["amount"].to_pylist()[3]
        == pa.scalar(3.25, pa.float64()).cast(pa.decimal128(6, 2)).as_py()
    )
    assert table["name"][999].as_py() == "n,999:"


def test_one_bad_record_reaches_the_json_reader_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    read_json = pajson.read_json

    def counting(data: pa.Buffer, **kwargs: Any) -> pa.Table:
        seen.append(bytes(data).count(b"\n") + 1)
        return read_json(data, **kwargs)

    monkeypatch.setattr(pajson, "read_json", counting)
    values = _orders(1000)
    for bad in (0, 500):  # the first record (no shape from it) or one in the middle
        values[bad] = b'{"id": %d, "ts": "2024-01-01T00:00:00Z"}' % bad  # the reader fails
    table = _same(values)
    assert table.num_rows == 1000 and seen == [2]  # the two records, together


def test_records_of_two_shapes_keep_their_batch_order() -> None:
    values = _orders(200)
    values[1::2] = [v.replace(b'"name": "n,', b'"name": null, "x": "n,') for v in values[1::2]]
    table = _same(values)
    assert table["id"].to_pylist() == list(range(200))
    parsed, rest = parse_shapes(
        pa.array(values).cast(pa.string()), json_decoder._parse_schema(SCHEMA)
    )
    assert [len(p) for p, _ in parsed] == [100, 100] and len(rest) == 0


def test_no_shape_for_records_the_shape_path_leaves_to_the_reader() -> None:
    wide, required = json_decoder._parse_schema(SCHEMA), frozenset({"id", "ts"})
    shape = shape_of('{"id": 1, "ts": 2}', wide, required)
    assert shape is not None and shape.keys == ("id", "ts")
    for text in [
        '{"id": 1, "ts": "2024-01-01"}',  # an ISO time: the reader's (and the reference's)
        '{"id": 1, "ts": 2, "id": 3}',  # a duplicate key
        '{"ts": 2}',  # a required field missing
        '{"id": null, "ts": 2}',  # ... or null
        '{"id": 1, "ts": 2, "x": [1]}',  # a nested value, even of a key not in the schema
        '{"id": 1, "ts": 2, "a\\"b": 1}',  # a key with a quote
        "[1]",
    ]:
        assert shape_of(text, wide, required) is None, text
