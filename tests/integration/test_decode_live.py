"""Bad records on the real live path: quarantined exactly once, never stopping the consumer.

Each test runs ``seamline live`` as a subprocess on the real broker into a real Iceberg or Lance
table and reads the table and the dead-letter topic back itself.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition

from coordinator.core import lineage
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.service import open_live_sink
from stream.decode.base import RawMessage
from stream.decode.json import JsonDecoder
from stream.decode.transform import identity
from stream.kafka.quarantine import H_ERROR, H_OFFSET, H_PARTITION, default_topic
from tests.integration.test_live_support import (
    ends,
    produce,
    start_live,
    stop_live,
    store_cut,
    wait_until,
)
from tests.unit.test_decode_json import BAD_RECORDS

pytestmark = pytest.mark.integration

REFERENCE = JsonDecoder(fast=False)

JOB = """
[job]
id = "decodejob"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "{topic}-live"
[schema]
event_time = "ts"
required = ["id"]
[schema.fields]
{fields}
[table]
{table}
partition_by = "none"
[live]
batch_records = 500
batch_seconds = 0.5
min_commit_seconds = 0.2
[state]
url = "sqlite:///{root}/state.db"
"""
CORPUS_FIELDS = {
    "id": "int64",
    "ts": "timestamp_ms",
    "name": "string",
    "small": "int32",
    "ratio": "float32",
    "price": "float64",
    "amount": "decimal(18,2)",
    "flag": "bool",
}
TYPES_FIELDS = {
    "id": "int64",
    "ts": "timestamp_ms",
    "amount": "decimal(18,2)",
    "day": "date",
    "blob": "binary",
}


def _job(root: Path, bootstrap: str, topic: str, fmt: str, fields: dict[str, str]) -> JobSpec:
    if fmt == "iceberg":
        table = (
            f'format = "iceberg"\nidentifier = "live.events"\n'
            f'catalog_uri = "sqlite:///{root}/catalog.db"\nwarehouse = "{root}/warehouse"'
        )
        (root / "warehouse").mkdir(parents=True, exist_ok=True)
    else:
        table = f'format = "lance"\nuri = "{root}/events.lance"'
    body = "\n".join(f'{k} = "{v}"' for k, v in fields.items())
    path = root / "job.toml"
    path.write_text(
        JOB.format(bootstrap=bootstrap, topic=topic, fields=body, table=table, root=root)
    )
    return load_job(path)


def _table(job: JobSpec) -> pa.Table:
    if job.table.format == "iceberg":
        from coordinator.service import open_catalog

        return open_catalog(job).load_table(str(job.table.identifier)).scan().to_arrow()
    import lance

    return lance.dataset(str(job.table.uri)).to_table()


def _offsets(job: JobSpec) -> dict[int, int]:
    return {int(p): int(o) for p, o in open_live_sink(job).live_offsets().items()}


def _dlq(job: JobSpec) -> list[tuple[int, int, str, bytes | None]]:
    """Every dead-letter record (duplicates kept): source partition, offset, error, raw value."""
    topic = job.live.quarantine_topic or default_topic(job.stream.topic)
    consumer = Consumer(
        {**job.kafka_config(), "group.id": "decode-test", "enable.auto.commit": False}
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
        consumer.assign([TopicPartition(topic, 0, low)])
        out: list[tuple[int, int, str, bytes | None]] = []
        while len(out) < high - low:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            pairs: Any = msg.headers() or []
            h = {str(k): v.decode() for k, v in pairs}
            out.append((int(h[H_PARTITION]), int(h[H_OFFSET]), h[H_ERROR], msg.value()))
        return out
    finally:
        consumer.close()


def _run(job: JobSpec, bootstrap: str, values: list[bytes]) -> dict[tuple[int, int], bytes]:
    """Produce ``values`` while ``seamline live`` runs; it must still run when all are in."""
    store_cut(job, {0: 0, 1: 0, 2: 0})
    proc = start_live(job)
    try:
        delivered = produce(bootstrap, job.stream.topic, len(values), poison=values.__getitem__)
        wait_until(lambda: _offsets(job) == ends(delivered), 180, "live to commit every offset")
        assert proc.poll() is None, "the live consumer exited on a bad record"
    finally:
        code = stop_live(proc)
    assert code == 0, (job.base_dir / "live.log").read_text()[-3000:]
    return delivered


def _assert_each_record_once(job: JobSpec, delivered: dict[tuple[int, int], bytes]) -> None:
    """Every record: exactly once in the table with its exact row, or exactly once quarantined."""
    schema = job.schema_.arrow_schema()
    table = _table(job)
    user = [f.name for f in schema]
    parts, offs = table[lineage.PARTITION].to_pylist(), table[lineage.OFFSET].to_pylist()
    got = Counter(zip(parts, offs, strict=True))
    assert not [k for k, n in got.items() if n > 1], "a record written twice"
    rows = {
        (r[lineage.PARTITION], r[lineage.OFFSET]): {c: r[c] for c in user}
        for r in table.to_pylist()
    }
    dlq = _dlq(job)
    assert not [k for k, n in Counter((p, o) for p, o, _, _ in dlq).items() if n > 1]
    bad = {(p, o): (e, raw) for p, o, e, raw in dlq}
    assert not set(rows) & set(bad), "a record both written and quarantined"
    assert set(rows) | set(bad) == set(delivered), "a record neither written nor quarantined"
    for (p, o), value in delivered.items():
        expected, reasons = REFERENCE.decode([RawMessage(p, o, value)], schema, identity, "live")
        if reasons:
            assert bad[(p, o)] == (reasons[0].error[:1000], value), (p, o)
        else:
            want = {c: expected.column(c)[0].as_py() for c in user}
            assert rows[(p, o)] == want, (p, o, value)


def _corpus() -> list[bytes]:
    rng = random.Random(11)
    out: list[bytes] = [v for v in BAD_RECORDS if v is not None and b"\n" not in v]
    for i in range(300):
        doc: dict[str, Any] = {
            "id": i,
            "ts": 1_700_000_000_000 + i,
            "name": rng.choice(["a", "é", "\u4e2d", "", None, "x" * 50]),
            "small": rng.choice([0, -(2**31), 2**31 - 1, None]),
            "ratio": rng.choice([0.5, 3.4e38, -1.5e-45, None]),
            "price": rng.choice([0.1, 1e308, -0.0, None]),
            "amount": rng.choice(["12.34", "-0.00", "9999999999999999.99", None]),
            "flag": rng.choice([True, False, None]),
        }
        text = json.dumps(doc)
        if i % 7 == 0:  # money written as a JSON number, as payments streams do
            text = text.replace(f'"{doc["amount"]}"', str(doc["amount"]))
        out.append(text.encode())
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_adversarial_corpus_each_record_in_table_or_quarantine_exactly_once(
    kafka_bootstrap: str, kafka_topic: object, tmp_path: Path, fmt: str
) -> None:
    topic = kafka_topic(3)  # type: ignore[operator]
    job = _job(tmp_path, kafka_bootstrap, topic, fmt, CORPUS_FIELDS)
    corpus = _corpus()
    delivered = _run(job, kafka_bootstrap, corpus)
    assert len(delivered) == len(corpus)
    _assert_each_record_once(job, delivered)
    assert len(_dlq(job)) >= 25  # the corpus really holds bad records (30 of them)


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_decimals_dates_and_binary_round_trip_exactly(
    kafka_bootstrap: str, kafka_topic: object, tmp_path: Path, fmt: str
) -> None:
    topic = kafka_topic(3)  # type: ignore[operator]
    job = _job(tmp_path, kafka_bootstrap, topic, fmt, TYPES_FIELDS)
    amounts = [b"12.34", b'"12.34"', b"0.1", b"123456789012.99", b"-0.00"]
    values = [
        b'{"id":%d,"ts":1700000000000,"amount":%s,"day":"2024-01-0%d","blob":"aGVsbG8="}'
        % (i, a, i + 1)
        for i, a in enumerate(amounts)
    ]
    _run(job, kafka_bootstrap, values)
    table = _table(job)
    assert table.schema.field("amount").type == pa.decimal128(18, 2)
    got = {r["id"]: r for r in table.to_pylist()}
    expected = ["12.34", "12.34", "0.1", "123456789012.99", "-0.00"]
    assert sorted(got) == [0, 1, 2, 3, 4]
    for i, text in enumerate(expected):
        assert isinstance(got[i]["amount"], Decimal)
        assert got[i]["amount"] == Decimal(text), (i, got[i]["amount"])
        assert str(got[i]["day"]) == f"2024-01-0{i + 1}" and got[i]["blob"] == b"hello"
    assert _dlq(job) == []


def test_one_malformed_record_alone_is_quarantined_and_iceberg_live_moves_past_it(
    kafka_bootstrap: str, kafka_topic: object, tmp_path: Path
) -> None:
    topic = kafka_topic(1)  # type: ignore[operator]
    job = _job(tmp_path, kafka_bootstrap, topic, "iceberg", CORPUS_FIELDS)
    store_cut(job, {0: 0})
    proc = start_live(job)
    try:
        produce(kafka_bootstrap, topic, 1, partitions=1, poison=lambda i: b'{"id":1,"x":"\\ud800')
        wait_until(lambda: _offsets(job) == {0: 1}, 120, "the offset to move past the record")
        assert proc.poll() is None
        assert _table(job).num_rows == 0
        produce(kafka_bootstrap, topic, 1, partitions=1, poison=lambda i: b'{"id":2,"ts":5}')
        wait_until(lambda: _offsets(job) == {0: 2}, 120, "the next record's commit")
        assert proc.poll() is None
    finally:
        code = stop_live(proc)
    assert code == 0, (job.base_dir / "live.log").read_text()[-3000:]
    table = _table(job)
    assert table["id"].to_pylist() == [2] and table[lineage.OFFSET].to_pylist() == [1]
    [(p, o, error, raw)] = _dlq(job)
    assert (p, o, raw) == (0, 0, b'{"id":1,"x":"\\ud800')
    assert error.startswith("decode: invalid JSON")
