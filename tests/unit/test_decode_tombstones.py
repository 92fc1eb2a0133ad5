"""Null-value tombstones (``[table] delete_when = { null_value = true }``): a keyed message
with a null value decodes into its key's marker row (key from the message key, event time
from the Kafka timestamp, other columns null, ``_seamline_deleted`` true, lineage), in batch
order with the other rows, the same whatever batch it arrives in and whatever the format;
without the declaration it stays quarantined; bad declarations are refused (exit 3)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from coordinator.core import lineage
from coordinator.core.controls import apply_where
from coordinator.core.errors import ConfigError, ExitCode
from coordinator.core.jobspec import JobSpec, parse_job
from stream.decode import decoder_for
from stream.decode.base import RawMessage
from stream.decode.tombstones import NullValueTombstones, carries_null_values
from stream.decode.transform import identity
from stream.live.faust_engine import _value

FIELDS = {"order_id": "int64", "amount": "float64", "ts": "timestamp_ms", "src": "string"}
TS = 1_700_000_000_000


def _doc(**table: Any) -> dict[str, Any]:
    return {
        "stream": {"bootstrap": "b:9092", "topic": "t"},
        "schema": {"fields": dict(FIELDS), "event_time": "ts", "required": ["order_id"],
                   "kafka": {"order_id": "key", "src": "header:src"}},
        "table": {"format": "lance", "uri": "t.lance", "key": ["order_id"],
                  "delete_when": {"null_value": True}, **table},
        "backfill": {"mode": "merge"},
    }  # fmt: skip


def _job(doc: dict[str, Any] | None = None) -> JobSpec:
    return parse_job(doc or _doc(), base_dir=Path("/tmp"), default_id="j")


def _msg(offset: int, key: bytes | None, value: dict[str, Any] | None, ts: int | None = TS,
         partition: int = 0) -> RawMessage:  # fmt: skip
    raw = None if value is None else json.dumps(value).encode()
    return RawMessage(partition, offset, raw, key, ts, (("src", b"web"),))


MSGS = [
    _msg(0, b"1", {"amount": 1.5, "ts": TS - 5}),
    _msg(1, b"2", None),  # tombstone of key 2
    _msg(2, None, None),  # no key: nothing to delete
    _msg(3, b"x", None),  # key does not convert to int64
    _msg(4, b"3", {"amount": "no", "ts": TS}),  # a bad value, as before
    _msg(5, b"4", None, ts=None),  # no timestamp: no event time
    _msg(6, b"1", None, ts=TS + 7),  # tombstone of key 1, after its value
]


def test_a_null_value_becomes_its_keys_marker_row_in_batch_order() -> None:
    job = _job()
    decoder = decoder_for("json", job)
    assert isinstance(decoder, NullValueTombstones) and carries_null_values(decoder)
    rows, bad = decoder.decode(MSGS, job.schema_.arrow_schema(), identity, "live")
    got = rows.to_pylist()
    assert [(r["order_id"], r[lineage.DELETED], r["_kafka_offset"]) for r in got] == [
        (1, False, 0), (2, True, 1), (1, True, 6),
    ]  # fmt: skip
    tomb = got[1]
    assert (tomb["amount"], tomb["src"], tomb["_seamline_side"]) == (None, "web", "live")
    assert tomb["ts"] == datetime.fromtimestamp(TS / 1000, UTC)  # the Kafka timestamp
    assert got[2]["ts"] == datetime.fromtimestamp((TS + 7) / 1000, UTC)
    assert rows.schema.names[-1] == lineage.DELETED
    reasons = {q.offset: q.error for q in bad}
    assert list(reasons) == [2, 3, 4, 5]  # batch order
    assert "null value without a message key" in reasons[2]
    assert "field 'order_id' (key)" in reasons[3]
    assert "field 'amount'" in reasons[4]
    assert "no timestamp" in reasons[5]
    assert all(q.raw is None for q in bad if q.offset != 4)  # a null value stays null


def test_the_same_record_gives_the_same_row_whatever_batch_it_arrives_in() -> None:
    job = _job()
    decoder, schema = decoder_for("json", job), job.schema_.arrow_schema()
    whole, whole_bad = decoder.decode(MSGS, schema, identity, "backfill")
    parts = [decoder.decode([m], schema, identity, "backfill") for m in MSGS]
    assert pa.concat_tables([r for r, _ in parts]).equals(whole)
    assert [q.error for _, b in parts for q in b] == [q.error for q in whole_bad]
    values = decoder.decode(MSGS[:1], schema, identity, "backfill")[0]  # no null value at all
    assert values.column_names == whole.column_names and values[lineage.DELETED].to_pylist() == [
        False
    ]


def test_without_the_declaration_a_null_value_stays_quarantined() -> None:
    doc = _doc()
    del doc["table"]["delete_when"]
    job = _job(doc)
    decoder = decoder_for("json", job)
    assert not carries_null_values(decoder)
    rows, bad = decoder.decode(MSGS, job.schema_.arrow_schema(), identity, "live")
    assert rows["order_id"].to_pylist() == [1] and lineage.DELETED not in rows.column_names
    assert {q.offset: q.error for q in bad}[1] == "decode: tombstone (null value)"


def test_the_transform_sees_tombstones_with_null_values() -> None:
    job = _job()

    def cents(table: pa.Table) -> pa.Table:
        i = table.schema.get_field_index("amount")
        return table.set_column(i, "amount", pc.multiply(table["amount"], 100.0))

    rows, _ = decoder_for("json", job).decode(MSGS, job.schema_.arrow_schema(), cents, "live")
    assert rows.select(["order_id", "amount", lineage.DELETED]).to_pylist() == [
        {"order_id": 1, "amount": 150.0, lineage.DELETED: False},
        {"order_id": 2, "amount": None, lineage.DELETED: True},
        {"order_id": 1, "amount": None, lineage.DELETED: True},
    ]


def test_avro_null_values_become_the_same_tombstones_as_json() -> None:
    import fastavro

    doc = _doc()
    doc["stream"]["format"] = "avro"
    writer = {"type": "record", "name": "o", "fields": [
        {"name": "amount", "type": ["null", "double"]}, {"name": "ts", "type": "long"}]}  # fmt: skip
    path = Path("/tmp") / "seamline-tomb-unit.avsc"
    path.write_text(json.dumps(writer), encoding="utf-8")
    doc["stream"]["avro"] = {"schema_file": str(path)}
    job = _job(doc)
    msgs = [MSGS[0], MSGS[1], MSGS[6]]
    avro_msgs = []
    for m in msgs:
        raw = None
        if m.value is not None:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), json.loads(m.value))
            raw = buf.getvalue()
        avro_msgs.append(RawMessage(m.partition, m.offset, raw, m.key, m.timestamp_ms, m.headers))
    schema = job.schema_.arrow_schema()
    a_rows, a_bad = decoder_for("avro", job).decode(avro_msgs, schema, identity, "live")
    j_rows, j_bad = decoder_for("json", _job()).decode(msgs, schema, identity, "live")
    assert a_rows.equals(j_rows) and a_rows.num_rows == 3 and not a_bad and not j_bad


def test_the_faust_engine_keeps_a_null_values_key_only_when_declared() -> None:
    class Message:
        value, key, timestamp, headers = None, b"7", TS / 1000, [("src", b"web")]

    assert _value(Message(), True) is None
    carried = _value(Message(), True, nulls=True)
    assert carried == b"" and getattr(carried, "meta", None) == (b"7", [("src", b"web")], TS)


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda d: d["backfill"].update(mode="overwrite"), 'tombstones need mode = "merge"'),
        (lambda d: d["schema"]["kafka"].pop("order_id"),
         "expected every table.key column to be the Kafka message key"),
        (lambda d: d["schema"].update(required=["order_id", "amount"]),
         "found ['amount'] (a null-value tombstone has no value to fill them)"),
        (lambda d: d["table"]["delete_when"].update(field="src", equals="d"),
         "found both"),
        (lambda d: d["table"].update(delete_when={"null_value": False}),
         "{ null_value = true } (a keyed message with a null value)"),
        (lambda d: d["schema"]["fields"].update(ts="date"), "found a date column"),
        (lambda d: d["table"].update(version="amount"),
         "key=table.version: expected a [schema.kafka] column"),
    ],
)  # fmt: skip
def test_bad_declarations_are_config_errors(edit: Any, says: str) -> None:
    doc = _doc()
    edit(doc)
    with pytest.raises(ConfigError) as err:
        _job(doc)
    assert err.value.exit_code == ExitCode.CONFIG
    assert says in str(err.value), str(err.value)
    assert "delete_when" in str(err.value) or "schema" in str(err.value)


def test_a_key_json_column_is_a_message_key() -> None:
    doc = _doc()
    doc["schema"]["kafka"]["order_id"] = "key:json"
    job = _job(doc)
    rows, _ = decoder_for("json", job).decode(MSGS[:2], job.schema_.arrow_schema(), identity, "live")
    assert rows["order_id"].to_pylist() == [1, 2]


def test_the_history_row_filter_keeps_kafka_tombstones() -> None:
    doc = _doc()
    doc["history"] = {"where": [{"column": "amount", "op": ">", "value": 5}]}
    job = _job(doc)
    rows, _ = decoder_for("json", job).decode(MSGS, job.schema_.arrow_schema(), identity, "live")
    kept = apply_where(rows, job.history_filter(kafka=True))
    assert kept["_kafka_offset"].to_pylist() == [1, 6]  # the tombstones; amount 1.5 is left out
    assert apply_where(rows, job.history_filter()).num_rows == 0  # archive rows: as written
