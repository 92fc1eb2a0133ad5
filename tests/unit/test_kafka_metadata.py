"""Kafka metadata columns (``[schema.kafka]``): key, headers and timestamp decoded by the
column's declaration; the same record gives the same row or the same quarantine reason on the
fast path, the per-record reference and the Avro decoder, whatever batch it arrives in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec, parse_job
from stream.decode.base import RawMessage
from stream.decode.json import JsonDecoder
from stream.decode.transform import identity

REFERENCE = JsonDecoder(fast=False)
FAST = JsonDecoder()
KAFKA = {"customer": "key", "channel": "header:source", "shard": "header:shard:json",
         "produced": "timestamp"}  # fmt: skip
FIELDS = {"customer": "string", "order_id": "int64", "channel": "string", "shard": "int32",
          "produced": "timestamp_ms", "ts": "timestamp_ms"}  # fmt: skip


def _job(kafka: dict[str, str], fields: dict[str, str] = FIELDS) -> JobSpec:
    doc = {
        "stream": {"bootstrap": "b:9092", "topic": "t"},
        "schema": {"fields": fields, "event_time": "ts", "required": ["customer"], "kafka": kafka},
        "table": {"format": "lance", "uri": "t.lance", "key": ["customer"]},
    }
    return parse_job(doc, base_dir=Path("/tmp"), default_id="j")


def _msg(i: int, key: bytes | None, headers: Any, ts: int | None) -> RawMessage:
    value = json.dumps({"order_id": i, "ts": 1_700_000_000_000 + i}).encode()
    return RawMessage(0, i, value, key, ts, headers)


def test_key_headers_and_timestamp_fill_their_columns() -> None:
    schema = _job(KAFKA).schema_.arrow_schema()
    msgs = [
        _msg(0, b"c-0", (("source", b"web"), ("shard", b"3")), 1_700_000_000_123),
        _msg(1, b"c-1", (("source", b"a"), ("source", b"app"),), None),  # last header wins
        _msg(2, None, (), 5),  # no key: required
        _msg(3, b"c-3", (("shard", b"99999999999"),), 5),  # out of int32
        _msg(4, b"\xff", (), 5),  # not UTF-8
        _msg(5, b"c-5", (("shard", b"[1]"),), 5),
    ]
    rows, bad = FAST.decode(msgs, schema, identity, "live")
    got = rows.select(["customer", "channel", "shard", "produced"]).to_pylist()
    assert [(r["customer"], r["channel"], r["shard"]) for r in got] == [
        ("c-0", "web", 3), ("c-1", "app", None),
    ]  # fmt: skip
    assert got[0]["produced"].timestamp() == 1_700_000_000.123 and got[1]["produced"] is None
    assert [(q.offset, q.error.split(":")[1].strip()) for q in bad] == [
        (2, "required field 'customer'"), (3, "field 'shard' (header 'shard')"),
        (4, "field 'customer' (key)"), (5, "field 'shard' (header 'shard')"),
    ]  # fmt: skip
    assert rows.schema.names[:6] == list(FIELDS)


_KEYS = st.one_of(st.none(), st.binary(max_size=4), st.text(max_size=4).map(str.encode),
                  st.integers(-(2**40), 2**40).map(lambda i: str(i).encode()))  # fmt: skip
_HEADERS = st.lists(
    st.tuples(st.sampled_from(["source", "shard", "x"]),
              st.one_of(st.none(), st.binary(max_size=3), st.sampled_from([b"1", b"-7", b'"s"']))),
    max_size=3,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_KEYS, _HEADERS, st.one_of(st.none(), st.integers(-1, 2**42))),
                max_size=12))  # fmt: skip
def test_fast_and_reference_paths_agree_on_metadata(
    cases: list[tuple[bytes | None, list[tuple[str, bytes | None]], int | None]],
) -> None:
    schema = _job({**KAFKA, "order_id": "key"}).schema_.arrow_schema()
    msgs = [_msg(i, k, tuple(h), ts) for i, (k, h, ts) in enumerate(cases)]
    fast_rows, fast_bad = FAST.decode(msgs, schema, identity, "live")
    ref_rows, ref_bad = REFERENCE.decode(msgs, schema, identity, "live")
    assert fast_rows.equals(ref_rows)
    assert [(q.offset, q.error) for q in fast_bad] == [(q.offset, q.error) for q in ref_bad]
    one_by_one = [REFERENCE.decode([m], schema, identity, "live") for m in msgs]
    assert sum(r.num_rows for r, _ in one_by_one) == fast_rows.num_rows
    assert [q.error for _, b in one_by_one for q in b] == [q.error for q in fast_bad]


@pytest.mark.parametrize(
    ("kafka", "fields", "expected"),
    [
        ({"customer": "key:xml"}, FIELDS, "expected \"key\", \"header:NAME\""),
        ({"nope": "key"}, FIELDS, "expected a column of [schema.fields]"),
        ({"customer": "timestamp"}, FIELDS, "expected a timestamp_ms or timestamp_us column"),
        ({"ts": "key"}, FIELDS, "expected a string, binary or integer column"),
    ],
)
def test_bad_declarations_are_refused(
    kafka: dict[str, str], fields: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=r"schema\.kafka") as err:
        _job(kafka, fields)
    assert expected in str(err.value)


def test_avro_records_get_the_same_metadata_columns_as_json() -> None:
    import io

    import fastavro

    from stream.decode.avro import AvroDecoder

    writer = {"type": "record", "name": "o", "fields": [
        {"name": "order_id", "type": "long"}, {"name": "ts", "type": "long"}]}  # fmt: skip
    parsed = fastavro.parse_schema(writer)
    schema = _job(KAFKA).schema_.arrow_schema()
    json_msgs = [
        _msg(0, b"c-0", (("source", b"web"), ("shard", b"2")), 17),
        _msg(1, None, (), 18),
        _msg(2, b"c-2", (("shard", b"x"),), None),
    ]
    avro_msgs = []
    for m in json_msgs:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, json.loads(m.value or b""))
        avro_msgs.append(RawMessage(m.partition, m.offset, buf.getvalue(), m.key, m.timestamp_ms,
                                    m.headers))  # fmt: skip
    a_rows, a_bad = AvroDecoder(schema=writer).decode(avro_msgs, schema, identity, "live")
    j_rows, j_bad = FAST.decode(json_msgs, schema, identity, "live")
    assert a_rows.equals(j_rows) and a_rows.num_rows == 1
    assert [(q.offset, q.error) for q in a_bad] == [(q.offset, q.error) for q in j_bad]
