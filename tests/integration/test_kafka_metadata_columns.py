"""Issue 11 item 5: the message key, a header and the Kafka timestamp as columns, on a real
broker into real Iceberg and Lance tables, through history (``seamline run``), live
(``seamline live``) and reconcile (the checksum sees the same values on both sides).

The message key is the table key of a merge-mode job; a record without a key (the key
column is required) is quarantined, never written; the table is read directly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_decode_live import _offsets, _table
from tests.integration.test_e2e_support import seamline
from tests.integration.test_live_support import start_live, stop_live, wait_until

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def _job(root: Path, fmt: str, bootstrap: str, topic: str) -> JobSpec:
    if fmt == "iceberg":
        (root / "warehouse").mkdir()
        table = (f'format = "iceberg"\nidentifier = "meta.orders"\n'
                 f'catalog_uri = "sqlite:///{root}/catalog.db"\nwarehouse = "{root}/warehouse"')
    else:
        table = f'format = "lance"\nuri = "{root}/orders.lance"'
    path = root / "job.toml"
    path.write_text(
        f"""[job]
id = "meta"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "{topic}-live"
[schema]
event_time = "ts"
required = ["customer"]
[schema.fields]
customer = "string"
order_id = "int64"
channel = "string"
shard = "int32"
produced = "timestamp_ms"
ts = "timestamp_ms"
[schema.kafka]
customer = "key"
channel = "header:source"
shard = "header:shard:json"
produced = "timestamp"
[table]
{table}
key = ["customer"]
partition_by = "none"
[backfill]
mode = "merge"
concurrency = 1
max_attempts = 2
[live]
batch_records = 100
batch_seconds = 0.3
min_commit_seconds = 0.2
[state]
url = "sqlite:///{root}/state.db"
""",
        encoding="utf-8",
    )
    return load_job(path)


def _produce(bootstrap: str, topic: str, ids: range) -> dict[int, dict[str, Any]]:
    """One record per id (key ``c-<id>``, headers, timestamp); id 3 and 9 have no key."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    expected: dict[int, dict[str, Any]] = {}
    for i in ids:
        stamp = T0 + timedelta(minutes=i)
        key = None if i % 6 == 3 else f"c-{i}".encode()
        headers: list[tuple[str, str | bytes | None]] = [
            ("source", b"web" if i % 2 else b"app"), ("shard", str(i % 4).encode())
        ]
        if i % 5 == 0:
            headers = headers[1:]  # no "source" header: channel is null
        value = json.dumps({"order_id": i, "ts": int(stamp.timestamp() * 1000)}).encode()
        producer.produce(topic, value, key=key, partition=0, headers=headers,
                         timestamp=int(stamp.timestamp() * 1000) + 7)  # fmt: skip
        if key is not None:
            expected[i] = {
                "customer": key.decode(), "order_id": i, "shard": i % 4,
                "channel": None if i % 5 == 0 else ("web" if i % 2 else "app"),
                "produced": stamp + timedelta(milliseconds=7), "ts": stamp,
            }  # fmt: skip
    assert producer.flush(30) == 0
    return expected


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_key_header_and_timestamp_columns_history_live_and_reconcile(
    tmp_path: Path, fmt: str, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    job = _job(tmp_path, fmt, kafka_bootstrap, kafka_topic(1))
    path = str(tmp_path / "job.toml")
    expected = _produce(kafka_bootstrap, job.stream.topic, range(0, 8))  # history
    res = seamline("run", path, "--output", "json")
    assert res.returncode == ExitCode.OK, res.stderr[-3000:]

    proc = start_live(job)
    try:
        expected |= _produce(kafka_bootstrap, job.stream.topic, range(8, 16))  # live
        wait_until(lambda: _offsets(job) == {0: 16}, 120, "live to commit offset 15")
        assert proc.poll() is None
    finally:
        assert stop_live(proc) == 0, (tmp_path / "live.log").read_text()[-3000:]

    rows = _table(job).to_pylist()  # the table itself
    got = {r["order_id"]: {k: r[k] for k in expected[0]} for r in rows}
    assert got == expected
    sides = {r["order_id"]: r["_seamline_side"] for r in rows}
    assert {s for i, s in sides.items() if i < 8} == {"backfill"}
    assert {s for i, s in sides.items() if i >= 8} == {"live"}

    rec = seamline("reconcile", path, "--output", "json")
    assert rec.returncode == ExitCode.OK, rec.stdout[-3000:] + rec.stderr[-2000:]
    totals = json.loads(rec.stdout)["totals"]
    assert totals["quarantined"] == 3 and totals["lost"] == 0, totals  # ids 3, 9, 15
