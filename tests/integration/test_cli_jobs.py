"""``seamline cut|plan|status`` against the real broker, and bad job files.

Each command runs as a real subprocess: the exit code, the one-line error and the absence of
any written state are what a user sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEAMLINE = str(Path(sys.executable).parent / "seamline")


def job_toml(topic: str, bootstrap: str, *, extra: str = "", slice_records: int = 5) -> str:
    return f"""
[job]
id = "orders"

[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"

[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"
amount = "float64"

[table]
format = "lance"
uri = "table.lance"

[backfill]
slice_records = {slice_records}
concurrency = 2
max_attempts = 3
{extra}
"""


def write_job(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orders.toml"
    path.write_text(text)
    return path


def seamline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEAMLINE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def produce(bootstrap: str, topic: str, per_partition: dict[int, int]) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    n = 0
    for partition, count in per_partition.items():
        for _ in range(count):
            doc = {"order_id": n, "ts": 1_704_067_200_000 + n * 1000, "amount": 1.5}
            producer.produce(topic, json.dumps(doc).encode(), partition=partition)
            n += 1
    assert producer.flush(30) == 0
    return n


def produce_with_aborted(bootstrap: str, topic: str, committed: int, aborted: int) -> None:
    """Partition 0: ``committed`` records in committed transactions, ``aborted`` aborted ones."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"t-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    for batch, commit in (
        (committed // 2, True),
        (aborted, False),
        (committed - committed // 2, True),
    ):
        producer.begin_transaction()
        for i in range(batch):
            doc = {"order_id": i, "ts": 1_704_067_200_000 + i, "amount": 2.0}
            producer.produce(topic, json.dumps(doc).encode(), partition=0)
        assert producer.flush(30) == 0  # aborted records must reach the log and take offsets
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)


def out_json(res: subprocess.CompletedProcess[str]) -> Any:
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_cut_is_taken_once_and_new_cut_bumps_the_epoch(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3)
    produce(kafka_bootstrap, topic, {0: 4, 1: 0, 2: 7})
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap))
    first = out_json(seamline("cut", str(job), "--output", "json"))
    assert first["epoch"] == 1 and first["topic"] == topic
    assert [(p["partition"], p["log_start"], p["hwm"]) for p in first["partitions"]] == [
        (0, 0, 4),
        (1, 0, 0),
        (2, 0, 7),
    ]
    assert first["watermark_ms"] == 1_704_067_200_000 + 10 * 1000  # the newest event time
    assert (tmp_path / ".seamline" / "orders.db").exists()
    produce(kafka_bootstrap, topic, {0: 3})
    again = out_json(seamline("cut", str(job), "--output", "json"))
    assert again == first  # the stored cut, not "now"
    newer = out_json(seamline("cut", str(job), "--new-cut", "--output", "json"))
    assert newer["epoch"] == 2 and newer["partitions"][0]["hwm"] == 7
    text = seamline("cut", str(job))
    assert text.returncode == 0 and "epoch=2" in text.stdout


def test_plan_dry_run_counts_exactly_the_records_below_the_cut_and_writes_nothing(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(2)
    produce_with_aborted(kafka_bootstrap, topic, committed=9, aborted=4)
    produce(kafka_bootstrap, topic, {1: 6})
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, slice_records=5))
    doc = out_json(seamline("plan", str(job), "--dry-run", "--output", "json"))
    assert not (tmp_path / ".seamline").exists()
    slices = doc["slices"]
    assert doc["exact"] is True and doc["stored"] is False
    # partition 0 holds 9 committed records, 4 aborted, and 3 transaction markers
    hwm0 = doc["cut"]["partitions"][0]["hwm"]
    assert hwm0 == 9 + 4 + 3
    assert sum(s["est_rows"] for s in slices) == doc["total"]["est_rows"] == 9 + 6
    assert sum(s["est_rows"] for s in slices if s["slice_id"].startswith("k-p0-")) == 9
    assert all(s["est_bytes"] > 0 for s in slices if s["est_rows"])
    assert [s["slice_id"] for s in slices if s["slice_id"].startswith("k-p1-")] == [
        "k-p1-000000000-000000005",
        "k-p1-000000005-000000006",
    ]
    again = out_json(seamline("plan", str(job), "--dry-run", "--output", "json"))
    assert again["plan_hash"] == doc["plan_hash"]


def test_plan_stores_the_plan_and_status_shows_it(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(1)
    produce(kafka_bootstrap, topic, {0: 12})
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, slice_records=5))
    doc = out_json(seamline("plan", str(job), "--output", "json"))
    assert doc["stored"] is True and doc["total"] == {
        "slices": 3,
        "est_rows": 12,
        "est_bytes": doc["total"]["est_bytes"],
    }
    produce(kafka_bootstrap, topic, {0: 5})
    same = out_json(seamline("plan", str(job), "--output", "json"))
    assert same["plan_hash"] == doc["plan_hash"] and same["cut"] == doc["cut"]
    status = out_json(seamline("status", str(job), "--output", "json"))
    assert status["counts"] == {"pending": 3}
    assert status["cut"]["plan_hash"] == doc["plan_hash"]
    assert status["reconcile"] is None and status["live"] == []
    text = seamline("status", str(job))
    assert text.returncode == 0 and "k-p0-000000010-000000012" in text.stdout


BAD_JOBS = {
    "unknown key": ("[backfill]\nslice_records = 5\n", "[backfill]\nslice_recods = 5\n"),
    "wrong type": ("slice_records = 5", 'slice_records = "many"'),
    "bad transform": ("[backfill]", '[transform]\nfunction = "no_such_mod.x:f"\n[backfill]'),
}


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_bad_job_files_give_one_error_line_and_write_nothing(
    case: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(1)
    old, new = BAD_JOBS[case]
    text = job_toml(topic, kafka_bootstrap)
    assert old in text
    job = write_job(tmp_path, text.replace(old, new, 1))
    for command in (["cut"], ["plan", "--dry-run"], ["plan"], ["run"]):
        res = seamline(*command, str(job))
        assert res.returncode == ExitCode.CONFIG, (command, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert not (tmp_path / ".seamline").exists()
    if case == "unknown key":
        assert "did you mean 'slice_records'" in lines[0]
    if case == "wrong type":
        assert "key=backfill.slice_records" in lines[0]
    if case == "bad transform":
        assert "key=transform.function" in lines[0]


def test_missing_topic_is_a_config_error(tmp_path: Path, kafka_bootstrap: str) -> None:
    job = write_job(tmp_path, job_toml(f"no-such-topic-{uuid.uuid4().hex}", kafka_bootstrap))
    for command in (["cut"], ["plan", "--dry-run"], ["run"]):
        res = seamline(*command, str(job), "--timeout", "5")
        assert res.returncode == ExitCode.CONFIG, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "does not exist" in lines[0] and "key=stream.topic" in lines[0]
    assert not (tmp_path / ".seamline").exists()


def test_unreachable_broker_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    job = write_job(tmp_path, job_toml("orders", "127.0.0.1:1"))
    res = seamline("cut", str(job), "--timeout", "2")
    assert res.returncode == ExitCode.ERROR, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "bootstrap=127.0.0.1:1: broker unreachable" in lines[0]
    assert not (tmp_path / ".seamline").exists()


def test_retention_loss_after_the_cut_is_reported_as_source_data_loss(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    topic = kafka_topic(2)
    produce(kafka_bootstrap, topic, {0: 10, 1: 10})
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, slice_records=5))
    out_json(seamline("plan", str(job), "--no-count", "--output", "json"))
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for fut in admin.delete_records([TopicPartition(topic, 1, 7)]).values():
        fut.result(30)
    exec_dir = tmp_path / "exec"
    exec_dir.mkdir()
    res = seamline(
        "run",
        str(job),
        "--executor",
        "tests.integration.test_coordinator_executor:execute",
        env={"SEAMLINE_TEST_EXEC_DIR": str(exec_dir)},
    )
    assert res.returncode == ExitCode.SOURCE_DATA_LOSS, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "source data loss" in lines[0]
    assert "partition=1 offsets=[0,5)" in lines[0] and "partition=1 offsets=[5,7)" in lines[0]
    assert not (exec_dir / "executions.log").exists()  # nothing ran


def test_plan_buckets_archive_files_by_event_time(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    topic = kafka_topic(1)
    archive = tmp_path / "archive"
    archive.mkdir()
    day_ms = 86_400_000
    base = 1_704_067_200_000  # 2024-01-01T00:00Z
    for name, times in {
        "a": [base, base + day_ms - 1],
        "b": [base + day_ms, base + 2 * day_ms],
    }.items():
        table = pa.table(
            {
                "order_id": pa.array(range(len(times)), pa.int64()),
                "ts": pa.array(times, pa.timestamp("ms", tz="UTC")),
                "amount": pa.array([1.0] * len(times)),
            }
        )
        pq.write_table(table, archive / f"{name}.parquet")
    extra = '\n[history]\nkafka = true\n[[history.archive]]\nglob = "archive/*.parquet"\n'
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, extra=extra))
    doc = out_json(seamline("plan", str(job), "--dry-run", "--output", "json"))
    archive_slices = [s for s in doc["slices"] if s["kind"] == "archive"]
    assert [s["slice_id"] for s in archive_slices] == [
        "a-day-20240101",
        "a-day-20240102",
        "a-day-20240103",
    ]
    assert archive_slices[0]["files"] == [str(archive / "a.parquet")]
    assert archive_slices[0]["scope"]["bucket"] == {
        "start": "2024-01-01T00:00:00+00:00",
        "end": "2024-01-02T00:00:00+00:00",
    }
    assert archive_slices[2]["files"] == [str(archive / "b.parquet")]
    assert not (tmp_path / ".seamline").exists()
