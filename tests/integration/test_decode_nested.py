"""Issue 11 item 4: nested ``list`` / ``struct`` / ``map`` values and offset timestamps on a real
broker into real Iceberg and Lance tables, through history (``seamline run``), live
(``seamline live``) and reconcile (the checksum hashes the nested values read back from the
table exactly as the decoded source rows). The table is read directly and compared exactly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
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

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
BAD = {5, 12}  # a leaf out of range (history) and a bad map value (live): quarantined


def _job(root: Path, fmt: str, bootstrap: str, topic: str) -> JobSpec:
    if fmt == "iceberg":
        (root / "warehouse").mkdir()
        table = (
            f'format = "iceberg"\nidentifier = "nested.orders"\n'
            f'catalog_uri = "sqlite:///{root}/catalog.db"\nwarehouse = "{root}/warehouse"'
        )
    else:
        table = f'format = "lance"\nuri = "{root}/orders.lance"'
    path = root / "job.toml"
    path.write_text(
        f"""[job]
id = "nested"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "{topic}-live"
[schema]
event_time = "ts"
required = ["order_id"]
[schema.fields]
order_id = "int64"
ts = "timestamp_us"
items = "list<struct<sku: string, qty: int32, seen: timestamp_ms>>"
prices = "map<string, decimal(18,2)>"
ship = "struct<city: string, tags: list<string>>"
[table]
{table}
partition_by = "none"
[backfill]
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


def _record(i: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON record ``i`` and the row it must become."""
    at = T0 + timedelta(minutes=i, microseconds=i)
    offset = timedelta(hours=(i % 5) - 2)
    local = (at + offset).replace(tzinfo=None).isoformat()
    zone = f"{'+' if offset >= timedelta(0) else '-'}{abs(i % 5 - 2):02d}:00"
    doc: dict[str, Any] = {
        "order_id": i,
        "ts": local + zone if i % 3 else at.isoformat().replace("+00:00", "Z"),
        "items": [{"sku": f"s{i}", "qty": i, "seen": int(at.timestamp() * 1000), "x": 1},
                  {"sku": None}] if i % 4 else [],
        "prices": {"eur": f"{i}.25", "usd": i + 0.5} if i % 2 else None,
        "ship": {"city": f"c{i}", "tags": ["a", "b"][: i % 3], "extra": True},
    }  # fmt: skip
    if i == 5:
        doc["items"][0]["qty"] = 2**31
    if i == 12:
        doc["prices"] = {"eur": "1.234"}
    row = {
        "order_id": i,
        "ts": at,
        "items": [{"sku": f"s{i}", "qty": i, "seen": at.replace(microsecond=at.microsecond // 1000 * 1000)},
                  {"sku": None, "qty": None, "seen": None}] if i % 4 else [],
        "prices": {"eur": Decimal(f"{i}.25"), "usd": Decimal(f"{i}.50")} if i % 2 else None,
        "ship": {"city": f"c{i}", "tags": ["a", "b"][: i % 3]},
    }  # fmt: skip
    return doc, row


def _produce(bootstrap: str, topic: str, ids: range) -> dict[int, dict[str, Any]]:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    expected: dict[int, dict[str, Any]] = {}
    for i in ids:
        doc, row = _record(i)
        producer.produce(topic, json.dumps(doc).encode(), partition=0)
        if i not in BAD:
            expected[i] = row
    assert producer.flush(30) == 0
    return expected


def _normal(row: dict[str, Any]) -> dict[str, Any]:
    """A row read back from the table, maps as dicts (their entry order is not data)."""
    out = {k: row[k] for k in ("order_id", "ts", "items", "prices", "ship")}
    if out["prices"] is not None:
        out["prices"] = dict(out["prices"])
    return out


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_nested_values_and_offset_timestamps_history_live_and_reconcile(
    tmp_path: Path, fmt: str, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    job = _job(tmp_path, fmt, kafka_bootstrap, kafka_topic(1))
    path = str(tmp_path / "job.toml")
    expected = _produce(kafka_bootstrap, job.stream.topic, range(0, 10))  # history
    res = seamline("run", path, "--output", "json")
    assert res.returncode == ExitCode.OK, res.stdout[-3000:] + res.stderr[-3000:]

    proc = start_live(job)
    try:
        expected |= _produce(kafka_bootstrap, job.stream.topic, range(10, 20))  # live
        wait_until(lambda: _offsets(job) == {0: 20}, 120, "live to commit offset 19")
        assert proc.poll() is None
    finally:
        assert stop_live(proc) == 0, (tmp_path / "live.log").read_text()[-3000:]

    rows = _table(job).to_pylist()  # the table itself
    assert sorted(r["order_id"] for r in rows) == sorted(expected)
    for r in rows:
        assert _normal(r) == expected[r["order_id"]], r
    sides = {r["order_id"]: r["_seamline_side"] for r in rows}
    assert {s for i, s in sides.items() if i < 10} == {"backfill"}
    assert {s for i, s in sides.items() if i >= 10} == {"live"}

    rec = seamline("reconcile", path, "--output", "json")
    assert rec.returncode == ExitCode.OK, rec.stdout[-3000:] + rec.stderr[-2000:]
    totals = json.loads(rec.stdout)["totals"]
    assert totals["quarantined"] == len(BAD), totals
    assert (totals["lost"], totals["duplicated"], totals["phantom"]) == (0, 0, 0), totals
