"""The Avro decoder: exact values, quarantine reasons, the wire format and the registry lookup.

No Schema Registry server can be installed here (it is neither on PyPI nor on Maven Central),
so :class:`RegistryServer` serves the one endpoint the client calls, ``GET /schemas/ids/{id}``,
from a real HTTP server on loopback; the decoder talks to it through confluent-kafka's
``SchemaRegistryClient``.
"""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.errors import ConfigError, SourceError
from coordinator.core.jobspec import JobSpec, parse_job
from stream.decode import decoder_for
from stream.decode.avro import AvroDecoder
from stream.decode.base import RawMessage
from stream.decode.transform import identity

ORDER_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {
            "name": "amount",
            "type": [
                "null",
                {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2},
            ],
        },
        {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}]},
        {"name": "blob", "type": ["null", "bytes"]},
        {"name": "name", "type": ["null", "string"]},
        {"name": "small", "type": ["null", "long"]},
    ],
}
ARROW = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("amount", pa.decimal128(18, 2)),
        pa.field("day", pa.date32()),
        pa.field("blob", pa.binary()),
        pa.field("name", pa.string()),
        pa.field("small", pa.int32()),
    ]
)
MONEY = ["12.34", "0.1", "123456789012.99", "-0.00", "-7.05"]
PARSED = fastavro.parse_schema(ORDER_SCHEMA)


def encode(record: dict[str, Any], schema_id: int | None = None) -> bytes:
    buf = io.BytesIO()
    if schema_id is not None:
        buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, PARSED, record)
    return buf.getvalue()


def order(i: int, amount: str | None = "12.34", small: int | None = 1) -> dict[str, Any]:
    return {
        "id": i,
        "ts": int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000) + i,
        "amount": None if amount is None else Decimal(amount),
        "day": date(2024, 1, 1 + i % 28),
        "blob": bytes([i % 256, 255]),
        "name": f"n{i}",
        "small": small,
    }


def decode(
    decoder: AvroDecoder, values: list[bytes | None]
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    msgs = [RawMessage(0, i, v) for i, v in enumerate(values)]
    table, bad = decoder.decode(msgs, ARROW, identity, "live")
    rows = [{c: r[c] for c in [*ARROW.names, "_kafka_offset"]} for r in table.to_pylist()]
    return rows, [(q.offset, q.error) for q in bad]


class RegistryServer:
    """A minimal Schema Registry: ``GET /schemas/ids/{id}`` from ``schemas``, 404 otherwise."""

    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:
        self.schemas = schemas
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                path = self.path.split("?")[0].rstrip("/")
                head, _, tail = path.rpartition("/")
                found = (
                    outer.schemas.get(int(tail))
                    if head == "/schemas/ids" and tail.isdigit()
                    else None
                )
                if found is None:
                    self._send(404, {"error_code": 40403, "message": "Schema not found"})
                else:
                    self._send(200, {"schema": json.dumps(found)})

            def _send(self, code: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RegistryServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def avro_job(tmp_path: Path, avro: dict[str, str] | None, fmt: str = "avro") -> JobSpec:
    stream: dict[str, Any] = {"bootstrap": "127.0.0.1:1", "topic": "t", "format": fmt}
    if avro is not None:
        stream["avro"] = avro
    doc = {
        "stream": stream,
        "schema": {"event_time": "ts", "fields": {"id": "int64", "ts": "timestamp_ms"}},
        "table": {"format": "lance", "uri": "t.lance"},
    }
    return parse_job(doc, base_dir=tmp_path, default_id="j")


def test_values_round_trip_exactly_from_a_schema_file(tmp_path: Path) -> None:
    (tmp_path / "order.avsc").write_text(json.dumps(ORDER_SCHEMA))
    decoder = decoder_for("avro", avro_job(tmp_path, {"schema_file": "order.avsc"}))
    assert isinstance(decoder, AvroDecoder)
    records = [order(i, amount=m) for i, m in enumerate(MONEY)] + [order(9, None, None)]
    rows, bad = decode(decoder, [encode(r) for r in records])
    assert bad == []
    assert [r["amount"] for r in rows] == [Decimal(m) for m in MONEY] + [None]
    assert [str(r["amount"]) for r in rows[:3]] == ["12.34", "0.10", "123456789012.99"]
    first = rows[0]
    assert first["ts"] == datetime(2024, 1, 1, tzinfo=UTC)
    assert (
        first["day"] == date(2024, 1, 1) and first["blob"] == b"\x00\xff" and first["name"] == "n0"
    )
    assert rows[-1]["small"] is None and rows[-1]["_kafka_offset"] == 5


def test_bad_records_are_quarantined_with_their_reason_and_the_rest_decode() -> None:
    decoder = AvroDecoder(schema=ORDER_SCHEMA)
    values: list[bytes | None] = [
        encode(order(0)),
        b"\xff\xff\xff",  # not Avro
        None,  # tombstone
        encode(order(3)) + b"x",  # trailing bytes
        encode(order(4, small=2**40)),  # out of int32 range
        encode(order(5, amount="1.5")),
    ]
    rows, bad = decode(decoder, values)
    assert [r["id"] for r in rows] == [0, 5]
    reasons = dict(bad)
    assert set(reasons) == {1, 2, 3, 4}
    assert reasons[1].startswith("decode: invalid Avro")
    assert reasons[2] == "decode: tombstone (null value)"
    assert "trailing data" in reasons[3]
    assert "field 'small'" in reasons[4] and "-2147483648" in reasons[4]


RECORD = st.builds(
    order,
    st.integers(0, 2**40),
    st.one_of(st.none(), st.decimals(-(10**15), 10**15, places=2, allow_nan=False).map(str)),
    st.one_of(st.none(), st.integers(-(2**33), 2**33)),
)
VALUE = st.one_of(
    RECORD.map(encode),
    st.tuples(RECORD.map(encode), st.integers(0, 40), st.binary(max_size=3)).map(
        lambda t: t[0][: t[1]] + t[2]  # truncated or garbled
    ),
    st.binary(max_size=30),
    st.none(),
)


@given(st.lists(VALUE, max_size=25))
def test_a_record_decodes_the_same_alone_or_in_any_batch(values: list[bytes | None]) -> None:
    decoder = AvroDecoder(schema=ORDER_SCHEMA)
    rows, bad = decode(decoder, values)
    alone_rows: list[dict[str, Any]] = []
    alone_bad: list[tuple[int, str]] = []
    for i, value in enumerate(values):
        r, b = decode(decoder, [value])
        alone_rows += [{**x, "_kafka_offset": i} for x in r]
        alone_bad += [(i, reason) for _, reason in b]
    assert rows == alone_rows and bad == alone_bad
    assert len(rows) + len(bad) == len(values)


def test_wire_format_schemas_come_from_the_registry_once_per_id() -> None:
    with RegistryServer({7: ORDER_SCHEMA}) as registry:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        decoder = AvroDecoder(registry=SchemaRegistryClient({"url": registry.url}))
        values: list[bytes | None] = [
            encode(order(0), 7),
            encode(order(1), 7),
            encode(order(2), 8),  # unknown id
            b"\x01" + encode(order(3), 7)[1:],  # wrong magic byte
            b"\x00\x00",  # too short
            encode(order(5), 8),
        ]
        rows, bad = decode(decoder, values)
    assert [r["id"] for r in rows] == [0, 1]
    reasons = dict(bad)
    assert reasons[2] == reasons[5] == "decode: schema id=8 is not in the registry"
    assert "Confluent wire format" in reasons[3] and "Confluent wire format" in reasons[4]
    ids = sorted(p.split("?")[0] for p in registry.requests)
    assert ids == ["/schemas/ids/7", "/schemas/ids/8"], registry.requests


def test_an_unreachable_registry_is_an_error_not_a_quarantine() -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    with RegistryServer({}) as registry:
        url = registry.url
    decoder = AvroDecoder(registry=SchemaRegistryClient({"url": url}))
    with pytest.raises(SourceError) as info:
        decode(decoder, [encode(order(0), 7)])
    assert "schema id=7" in str(info.value) and "registry_url" in str(info.value)


def test_avro_settings_are_checked_up_front(tmp_path: Path) -> None:
    for avro, message in [
        (None, "found 0"),
        ({"schema_file": "a.avsc", "registry_url": "http://r:8081"}, "found 2"),
    ]:
        with pytest.raises(ConfigError) as info:
            avro_job(tmp_path, avro)
        assert "key=stream.avro" in str(info.value) and message in str(info.value)
    with pytest.raises(ConfigError) as info:
        avro_job(tmp_path, {"schema_file": "a.avsc"}, fmt="json")
    assert "expected no Avro settings" in str(info.value)
    with pytest.raises(ConfigError) as info:
        avro_job(tmp_path, {"registry_url": "ftp://user:Canary-Sr-1@r/x"})
    assert "Canary-Sr-1" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        decoder_for("avro", avro_job(tmp_path, {"schema_file": "missing.avsc"}))
    assert "key=stream.avro.schema_file" in str(info.value) and "missing.avsc" in str(info.value)
    (tmp_path / "bad.avsc").write_text('{"type": "record", "name": "X", "fields": [{"name": 1}]}')
    with pytest.raises(ConfigError) as info:
        decoder_for("avro", avro_job(tmp_path, {"schema_file": "bad.avsc"}))
    assert "expected an Avro schema" in str(info.value)


def test_avro_records_arrays_and_maps_decode_like_json_nested_values() -> None:
    from coordinator.core.fieldtypes import field_type

    writer = {
        "type": "record",
        "name": "Basket",
        "fields": [
            {"name": "id", "type": "long"},
            {
                "name": "items",
                "type": {
                    "type": "array",
                    "items": {
                        "type": "record",
                        "name": "Item",
                        "fields": [
                            {"name": "sku", "type": "string"},
                            {"name": "qty", "type": "long"},
                            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
                        ],
                    },
                },
            },
            {
                "name": "prices",
                "type": {
                    "type": "map",
                    "values": {
                        "type": "bytes",
                        "logicalType": "decimal",
                        "precision": 18,
                        "scale": 2,
                    },
                },
            },
        ],
    }
    arrow = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("items", field_type("list<struct<sku: string, qty: int32, day: date>>")),
            pa.field("prices", field_type("map<string, decimal(18,2)>")),
        ]
    )
    parsed = fastavro.parse_schema(writer)

    def enc(qty: int) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(
            buf,
            parsed,
            {
                "id": qty,
                "items": [{"sku": "a", "qty": qty, "day": date(2024, 1, 2)}],
                "prices": {"eur": Decimal("12.34")},
            },
        )
        return buf.getvalue()

    msgs = [RawMessage(0, 0, enc(2)), RawMessage(0, 1, enc(2**40))]
    table, bad = AvroDecoder(schema=writer).decode(msgs, arrow, identity, "live")
    row = table.to_pylist()[0]
    assert row["items"] == [{"sku": "a", "qty": 2, "day": date(2024, 1, 2)}]
    assert row["prices"] == [("eur", Decimal("12.34"))]
    assert [(q.offset, q.error) for q in bad] == [
        (
            1,
            "decode: field 'items': [0].qty: expected an integer in "
            "[-2147483648, 2147483647] (int32), found 1099511627776",
        )
    ]
