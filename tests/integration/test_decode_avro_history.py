"""Avro history: ``seamline run`` reads a slice of plain Avro bodies (schema from a file) from
the real broker into a real table; bad records are quarantined and reconcile counts them."""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import Producer

from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import load_job
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import seamline
from tests.integration.test_decode_live import _dlq, _table
from tests.unit.test_decode_avro import MONEY, ORDER_SCHEMA, encode, order

pytestmark = pytest.mark.integration

JOB = """
[job]
id = "avrohistory"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
format = "avro"
[stream.avro]
schema_file = "order.avsc"
[schema]
event_time = "ts"
required = ["id"]
[schema.fields]
id = "int64"
ts = "timestamp_ms"
amount = "decimal(18,2)"
name = "string"
[table]
{table}
partition_by = "none"
[backfill]
slice_records = 25
concurrency = 2
"""
BAD = (b"\xff\xff\xff\xff", encode(order(999))[:6], encode(order(998)) + b"\x01")


def _produce(bootstrap: str, topic: str) -> dict[tuple[int, int], bytes]:
    out: dict[tuple[int, int], bytes] = {}
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    values = [encode(order(i, MONEY[i % len(MONEY)])) for i in range(60)]
    values[10:10], values[40:40], values[50:50] = [BAD[0]], [BAD[1]], [BAD[2]]
    for i, value in enumerate(values):

        def done(err: object, msg: object) -> None:
            assert err is None, err
            out[(msg.partition(), msg.offset())] = msg.value()  # type: ignore[attr-defined]

        producer.produce(topic, value, partition=i % 2, on_delivery=done)
    assert producer.flush(30) == 0
    return out


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_avro_history_lands_exactly_and_reconciles_with_the_quarantined_counted(
    kafka_bootstrap: str, kafka_topic: TopicFactory, tmp_path: Path, fmt: str
) -> None:
    topic = kafka_topic(2)
    delivered = _produce(kafka_bootstrap, topic)
    (tmp_path / "order.avsc").write_text(json.dumps(ORDER_SCHEMA))
    if fmt == "iceberg":
        (tmp_path / "wh").mkdir()
        table = (
            f'format = "iceberg"\nidentifier = "db.avro"\n'
            f'catalog_uri = "sqlite:///{tmp_path}/catalog.db"\nwarehouse = "{tmp_path}/wh"'
        )
    else:
        table = f'format = "lance"\nuri = "{tmp_path}/avro.lance"'
    path = tmp_path / "job.toml"
    path.write_text(JOB.format(bootstrap=kafka_bootstrap, topic=topic, table=table))
    res: subprocess.CompletedProcess[str] = seamline("run", str(path))
    assert res.returncode == ExitCode.OK, res.stdout + res.stderr
    assert (
        "reconciled=True lost=0 duplicated=0 phantom=0 overlap=0 gap=0 quarantined=3" in res.stdout
    )
    job = load_job(path)
    rows = _table(job).to_pylist()
    assert sorted(r["id"] for r in rows) == list(range(60))
    for r in rows:
        assert r["amount"] == Decimal(MONEY[r["id"] % len(MONEY)]) and r["name"] == f"n{r['id']}"
    dlq = _dlq(job)
    assert sorted(raw for _, _, _, raw in dlq if raw is not None) == sorted(BAD)
    assert {(p, o) for p, o, _, _ in dlq} == {k for k, v in delivered.items() if v in BAD}
