"""Avro in the Confluent wire format on the real live path, the schema from a registry.

``seamline live`` runs as a subprocess on the real broker into a real Iceberg or Lance table;
the test reads the table and the dead-letter topic back itself. The Schema Registry is the
minimal HTTP server of :mod:`tests.unit.test_decode_avro` (no registry server can be
installed here: it is neither on PyPI nor on Maven Central); everything else is real.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from coordinator.core import lineage
from coordinator.core.jobspec import JobSpec, load_job
from stream.decode.avro import AvroDecoder
from stream.decode.base import RawMessage
from stream.decode.transform import identity
from tests.integration.test_decode_live import _dlq, _run, _table
from tests.unit.test_decode_avro import MONEY, ORDER_SCHEMA, RegistryServer, encode, order

pytestmark = pytest.mark.integration

SCHEMA_ID = 42
JOB = """
[job]
id = "avrojob"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "{topic}-live"
format = "avro"
[stream.avro]
registry_url = "{registry}"
[schema]
event_time = "ts"
required = ["id"]
[schema.fields]
id = "int64"
ts = "timestamp_ms"
amount = "decimal(18,2)"
day = "date"
blob = "binary"
name = "string"
small = "int32"
[table]
{table}
partition_by = "none"
[live]
batch_records = 200
batch_seconds = 0.5
min_commit_seconds = 0.2
[state]
url = "sqlite:///{root}/state.db"
"""


def _job(root: Path, bootstrap: str, topic: str, fmt: str, registry: str) -> JobSpec:
    if fmt == "iceberg":
        (root / "warehouse").mkdir(parents=True, exist_ok=True)
        table = (
            f'format = "iceberg"\nidentifier = "live.avro"\n'
            f'catalog_uri = "sqlite:///{root}/catalog.db"\nwarehouse = "{root}/warehouse"'
        )
    else:
        table = f'format = "lance"\nuri = "{root}/avro.lance"'
    path = root / "job.toml"
    text = JOB.format(bootstrap=bootstrap, topic=topic, table=table, root=root, registry=registry)
    path.write_text(text)
    return load_job(path)


def _corpus() -> list[bytes]:
    rng = random.Random(5)
    good = [
        encode(order(i, rng.choice([*MONEY, None]), rng.choice([0, -(2**31), None])), SCHEMA_ID)
        for i in range(120)
    ]
    bad = [
        encode(order(900), SCHEMA_ID + 1),  # an id the registry does not hold
        b"\x01" + encode(order(901), SCHEMA_ID)[1:],  # wrong magic byte
        b"\x00\x00\x00",  # shorter than the header
        encode(order(902), SCHEMA_ID)[:9],  # truncated body
        encode(order(903), SCHEMA_ID) + b"\x00",  # trailing byte
        encode(order(904, small=2**31), SCHEMA_ID),  # out of the int32 range
        b'{"id": 905, "ts": 1700000000000}',  # JSON on an Avro topic
    ]
    out = good + bad
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_avro_from_a_registry_each_record_in_table_or_quarantine_exactly_once(
    kafka_bootstrap: str, kafka_topic: object, tmp_path: Path, fmt: str
) -> None:
    topic = kafka_topic(3)  # type: ignore[operator]
    with RegistryServer({SCHEMA_ID: ORDER_SCHEMA}) as registry:
        job = _job(tmp_path, kafka_bootstrap, topic, fmt, registry.url)
        corpus = _corpus()
        delivered = _run(job, kafka_bootstrap, corpus)
        reference = AvroDecoder(registry=SchemaRegistryClient({"url": registry.url}))
        schema = job.schema_.arrow_schema()
        expected = {
            key: reference.decode([RawMessage(*key, value)], schema, identity, "live")
            for key, value in delivered.items()
        }
    table = _table(job)
    keys = list(
        zip(table[lineage.PARTITION].to_pylist(), table[lineage.OFFSET].to_pylist(), strict=True)
    )
    assert max(Counter(keys).values()) == 1, "a record written twice"
    rows = {(r[lineage.PARTITION], r[lineage.OFFSET]): r for r in table.to_pylist()}
    dlq = _dlq(job)
    assert max(Counter((p, o) for p, o, _, _ in dlq).values()) == 1, "quarantined twice"
    bad = {(p, o): (error, raw) for p, o, error, raw in dlq}
    assert len(bad) == 7 and len(rows) == 120 and set(rows) | set(bad) == set(delivered)
    for key, (want, reasons) in expected.items():
        if reasons:
            assert bad[key] == (reasons[0].error, delivered[key]), key
        else:
            assert {c: rows[key][c] for c in schema.names} == {
                c: want.column(c)[0].as_py() for c in schema.names
            }, key
    errors = sorted(error for error, _ in bad.values())
    assert sum("schema id=43 is not in the registry" in r for r in errors) == 1
    assert sum("Confluent wire format" in r for r in errors) == 3  # magic, short, JSON
    by_id = {r["id"]: r for r in rows.values()}
    assert all(isinstance(r["amount"], Decimal | None) for r in by_id.values())
    assert by_id[0]["ts"] == datetime(2024, 1, 1, tzinfo=UTC) and by_id[0]["day"] == date(
        2024, 1, 1
    )
    assert {str(r["amount"]) for r in by_id.values()} >= {"12.34", "0.10", "123456789012.99"}
