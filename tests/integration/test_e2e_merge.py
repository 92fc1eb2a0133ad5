"""Merge mode end to end (issue 13), on Iceberg and Lance, real broker, ``seamline`` processes.

An archive of payments, a topic that corrects archive keys and holds second versions of its
own keys, and live traffic that corrects both — produced and consumed by ``seamline live``
BEFORE the backfill runs, so every history slice of a live-corrected key commits after a
newer live version — plus a second live wave during the run. ``seamline run`` is killed twice
with ``kill -9`` (coordinator and workers) and then finishes. The test reads the table itself:
exactly one row per key, holding the newest version under the declared order (archive <
Kafka, offset within a partition), the independent oracle (``coordinator.testing.oracle``)
agrees, and so does the run's reconcile (0 lost/duplicated, superseded counted). The
``version`` variant declares ``updated_at``, and makes version order disagree with source
order on purpose (topic corrections older than their archive row, live corrections older than
their topic version).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from backfill.sinks import open_sink
from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.state.store import StateStore
from coordinator.testing.oracle import check
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import (
    ZERO,
    counts,
    ends_of,
    job_path,
    json_out,
    kill_group,
    live_consumer,
    seamline,
    start,
    take_cut,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 3
BASE = datetime(2024, 1, 1, tzinfo=UTC)
UPDATED = datetime(2024, 6, 1, tzinfo=UTC)  # updated_at of the first version of every key


@dataclass(frozen=True)
class Version:
    """One source version of a key: where it came from and what it says."""

    order_id: int
    amount: float
    updated_at: int  # epoch ms
    rank: int  # 0 archive, 1 kafka
    partition: int
    offset: int

    def order(self, by_version: bool) -> tuple[int, ...]:
        head = (self.updated_at,) if by_version else ()
        return (*head, self.rank, self.partition, self.offset)


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _ts(order_id: int) -> int:
    """Event time of an order: archive ids 1..240 in Jan-Mar 2024, topic ids from April."""
    if order_id <= 240:
        return _ms(BASE + timedelta(hours=8 * order_id))
    return _ms(datetime(2024, 4, 1, tzinfo=UTC) + timedelta(hours=2 * (order_id - 240)))


def _doc(order_id: int, amount: float, updated: int) -> dict[str, Any]:
    return {"order_id": order_id, "amount": amount, "ts": _ts(order_id), "updated_at": updated}


def job_text(root: Path, fmt: str, bootstrap: str, topic: str, by_version: bool) -> str:
    if fmt == "iceberg":
        table = (
            f'format = "iceberg"\nidentifier = "e2e.payments"\n'
            f'catalog_uri = "sqlite:///{root}/catalog.db"\nwarehouse = "{root}/warehouse"'
        )
    else:
        table = f'format = "lance"\nuri = "{root}/payments.lance"'
    version = 'version = "updated_at"\n' if by_version else ""
    return f"""[job]
id = "merge"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "{topic}-live"
[schema]
event_time = "ts"
required = ["order_id", "ts"]
[schema.fields]
order_id = "int64"
amount = "float64"
ts = "timestamp_ms"
updated_at = "timestamp_ms"
[table]
{table}
key = ["order_id"]
{version}partition_by = "day"
[history]
kafka = true
[[history.archive]]
glob = "{root}/archive/*.parquet"
format = "parquet"
bucket = "month"
[backfill]
mode = "merge"
slice_records = 60
concurrency = 2
max_attempts = 5
[live]
batch_records = 500
batch_seconds = 0.3
min_commit_seconds = 0.3
[state]
url = "sqlite:///{root}/state.db"
"""


def write_archive(root: Path) -> list[Version]:
    """Payments 1..240, one Parquet file per month."""
    ids = list(range(1, 241))
    docs = [_doc(i, float(i), _ms(UPDATED)) for i in ids]
    table = pa.table(
        {
            "order_id": pa.array(ids, pa.int64()),
            "amount": pa.array([d["amount"] for d in docs], pa.float64()),
            "ts": pa.array([d["ts"] for d in docs], pa.int64()).cast(pa.timestamp("ms", "UTC")),
            "updated_at": pa.array([d["updated_at"] for d in docs], pa.int64()).cast(
                pa.timestamp("ms", "UTC")
            ),
        }
    )
    folder = root / "archive"
    folder.mkdir(parents=True)
    months = pc.strftime(table["ts"], format="%Y-%m")
    for month in sorted(set(months.to_pylist())):
        pq.write_table(table.filter(pc.equal(months, month)), folder / f"p-{month}.parquet")
    return [Version(i, float(i), _ms(UPDATED), 0, -1, -1) for i in ids]


def produce(bootstrap: str, topic: str, docs: list[dict[str, Any]]) -> list[Version]:
    """Produce ``docs`` in order (partition = order_id % 3); their versions with offsets."""
    out: list[Version] = []
    errors: list[str] = []

    def done(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
            return
        d = json.loads(msg.value())
        out.append(
            Version(d["order_id"], d["amount"], d["updated_at"], 1, msg.partition(), msg.offset())
        )

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for d in docs:
        key = str(d["order_id"]).encode()
        producer.produce(
            topic, json.dumps(d).encode(), key=key, partition=d["order_id"] % PARTITIONS,
            on_delivery=done,
        )  # fmt: skip
        producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors
    return out


def _at(hours: int) -> int:
    return _ms(UPDATED + timedelta(hours=hours))


def topic_docs(by_version: bool) -> list[dict[str, Any]]:
    """New payments 241..600, 40 corrections of archive keys 1..40 and second versions of
    topic keys 241..260. With ``by_version``, corrections of 31..40 are OLDER than the
    archive row (the archive row must stay)."""
    docs = [_doc(i, float(i), _ms(UPDATED)) for i in range(241, 601)]
    for i in range(1, 41):
        older = by_version and i > 30
        docs.append(_doc(i, 1000.0 + i, _at(-5 if older else 1)))
    docs += [_doc(i, 2000.0 + i, _at(2)) for i in range(241, 261)]
    return docs


def live_docs(by_version: bool) -> list[dict[str, Any]]:
    """Live corrections of archive keys 41..55, of keys 1..5 (already corrected in the topic)
    and of topic keys 261..275, plus new payments 601..630. With ``by_version``, the live
    corrections of 271..275 are OLDER than the topic version (the history row must win)."""
    docs = [_doc(i, 3000.0 + i, _at(3)) for i in range(41, 56)]
    docs += [_doc(i, 4000.0 + i, _at(4)) for i in range(1, 6)]
    for i in range(261, 276):
        older = by_version and i > 270
        docs.append(_doc(i, 5000.0 + i, _at(-7 if older else 3)))
    return docs + [_doc(i, float(i), _ms(UPDATED)) for i in range(601, 631)]


def wave_docs() -> list[dict[str, Any]]:
    """Produced while the backfill runs: live corrections of archive keys 56..70."""
    return [_doc(i, 6000.0 + i, _at(6)) for i in range(56, 71)]


def newest(versions: list[Version], by_version: bool) -> dict[int, Version]:
    """The expected winner of every key, computed independently of seamline."""
    out: dict[int, Version] = {}
    for v in versions:
        cur = out.get(v.order_id)
        if cur is None or v.order(by_version) > cur.order(by_version):
            out[v.order_id] = v
    return out


def committed(job: JobSpec) -> int:
    with StateStore(job.state_url(), create=False) as store:
        return sum(r.status in ("committed", "reconciled") for r in store.list_slices(job.job_id))


def live_at(job: JobSpec, versions: list[Version]) -> bool:
    ends = ends_of({(v.partition, v.offset): v.order_id for v in versions if v.rank == 1})
    table = {int(p): int(o) for p, o in open_sink(job).live_offsets().items()}
    return all(table.get(p) == e for p, e in ends.items())


def assert_newest_per_key(job: JobSpec, want: dict[int, Version]) -> None:
    rows = open_sink(job).scan()
    ids = rows["order_id"].to_pylist()
    assert len(ids) == len(set(ids)), "exactly one row per key"
    assert sorted(ids) == sorted(want)
    got = {
        r["order_id"]: (r["amount"], _ms(r["updated_at"]), r["_kafka_partition"], r["_kafka_offset"])
        for r in rows.select(["order_id", "amount", "updated_at", "_kafka_partition", "_kafka_offset"]).to_pylist()
    }  # fmt: skip
    wrong = {
        k: (got[k], (v.amount, v.updated_at, v.partition, v.offset))
        for k, v in want.items()
        if got[k] != (v.amount, v.updated_at, None if v.rank == 0 else v.partition,
                      None if v.rank == 0 else v.offset)
    }  # fmt: skip
    assert not wrong, (
        f"{len(wrong)} keys do not hold their newest version, e.g. {list(wrong.items())[:5]}"
    )


def _kill_after(job: JobSpec, at_least: int, log_name: str) -> int:
    """``kill -9`` a ``seamline run`` once ``at_least`` slices are committed. Each slice
    sleeps 1 s before it runs (tests/integration/slow_executor.py): merge slices are fast
    enough that a run could otherwise finish between two polls, and the kill must come
    mid-run."""
    slow = {"SEAMLINE_TEST_EXEC_DIR": str(job.base_dir), "SEAMLINE_TEST_EXEC_SLEEP": "1.0"}
    proc = start(job, "run", job_path(job), "--output", "json", "--executor",
                 "tests.integration.slow_executor:execute", log_name=log_name, env=slow)  # fmt: skip
    try:
        wait_until(lambda: committed(job) >= at_least, 240, f"{at_least} committed slices")
    finally:
        kill_group(proc)  # kill -9 the coordinator and its workers mid-run
    return committed(job)


@pytest.mark.parametrize("by_version", [False, True], ids=["source-order", "version"])
@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_merge_keeps_the_newest_version_of_every_key_through_two_kills(
    fmt: str, by_version: bool, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(PARTITIONS, config={"retention.ms": "-1"})
    (tmp_path / "warehouse").mkdir()
    path = tmp_path / "job.toml"
    path.write_text(job_text(tmp_path, fmt, kafka_bootstrap, topic, by_version), encoding="utf-8")
    job = load_job(path)
    versions = write_archive(tmp_path) + produce(kafka_bootstrap, topic, topic_docs(by_version))
    take_cut(job)
    open_sink(job).ensure_table()
    with live_consumer(job) as live:
        versions += produce(kafka_bootstrap, topic, live_docs(by_version))
        wait_until(lambda: live_at(job, versions), 120, "live to hold the live corrections")
        first = _kill_after(job, 2, "run1.log")  # history slices commit after newer live rows
        versions += produce(kafka_bootstrap, topic, wave_docs())  # live corrects history
        second = _kill_after(job, first + 1, "run2.log")
        with StateStore(job.state_url(), create=False) as store:
            total = len(store.list_slices(job.job_id))
        assert second < total, "the second kill happened mid-run"
        final = seamline("run", job_path(job), "--output", "json")
        assert final.returncode == ExitCode.OK, final.stdout[-3000:] + final.stderr[-3000:]
        doc = json_out(final)
        assert doc["reconciled"] is True and doc["committed"] == total, doc
        wait_until(lambda: live_at(job, versions), 120, "live to catch up")
        assert live.poll() is None, "the live consumer ran throughout"

    assert_newest_per_key(job, newest(versions, by_version))
    with StateStore(job.state_url(), create=False) as store:
        cut = store.get_cut(job.job_id)
    assert cut is not None
    oracle = check(job, {int(p.partition): int(p.hwm) for p in cut.partitions})
    assert oracle.anomalies == 0, oracle.to_json()
    totals = doc["reconcile"]  # the run's own reconcile, after the live corrections landed
    assert counts(totals) == ZERO, totals
    assert totals["superseded"] > 0 and totals["duplicate_keys"] == 0, totals
