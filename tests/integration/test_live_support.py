"""Helpers shared by the live integration tests (no tests here).

They write a real job file, store a real cut in the state store, produce to the real broker,
run ``seamline live`` as a subprocess and read the real Iceberg table back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Producer

from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Cut, Offset, PartitionCut, PartitionId
from coordinator.state.store import StateStore
from coordinator.testing.pytest_plugin import write_job_file

SEAMLINE = str(Path(sys.executable).parent / "seamline")



def write_job(
    root: Path,
    bootstrap: str,
    topic: str,
    *,
    batch_records: int = 5000,
    batch_seconds: float = 0.5,
    min_commit_seconds: float = 0.2,
) -> JobSpec:
    """A job file under ``root`` (the plugin's job factory) on the Iceberg table ``live.events``."""
    return write_job_file(
        root, bootstrap, topic, table_format="iceberg", job_id="livejob",
        schema={"required": ["id"], "fields": {"id": "int64", "ts": "timestamp_ms", "name": "string"}},
        table={"identifier": "live.events"},
        backfill={"slice_records": 250_000, "concurrency": 2, "max_attempts": 5},
        live={"batch_records": batch_records, "batch_seconds": batch_seconds,
              "min_commit_seconds": min_commit_seconds, "expire_snapshots_every": 20,
              "keep_snapshots": 10},
    ).spec  # fmt: skip


def store_cut(job: JobSpec, hwm: dict[int, int]) -> None:
    """Store the job's cut (``log_start`` 0, the given ``hwm`` per partition)."""
    store = StateStore(job.state_url())
    try:
        epoch = store.ensure_job(job.job_id)
        parts = tuple(
            PartitionCut(PartitionId(p), Offset(0), Offset(h)) for p, h in sorted(hwm.items())
        )
        store.save_cut(Cut(job.job_id, job.stream.topic, parts, datetime.now(UTC), epoch))
    finally:
        store.close()


def record(i: int) -> bytes:
    """A valid record."""
    return json.dumps({"id": i, "ts": 1_700_000_000_000 + i, "name": f"n{i}"}).encode()


def produce(
    bootstrap: str,
    topic: str,
    n: int,
    partitions: int = 3,
    poison: Callable[[int], bytes | None] | None = None,
    pace_every: int = 0,
    pace_s: float = 0.0,
) -> dict[tuple[int, int], bytes]:
    """Produce ``n`` records round-robin; returns ``{(partition, offset): value}`` delivered."""
    out: dict[tuple[int, int], bytes] = {}
    errors: list[str] = []

    def done(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            out[(msg.partition(), msg.offset())] = msg.value()  # type: ignore[attr-defined]

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    for i in range(n):
        value = (poison(i) if poison else None) or record(i)
        producer.produce(topic, value=value, partition=i % partitions, on_delivery=done)
        if i % 1000 == 0:
            producer.poll(0)
        if pace_every and i % pace_every == 0:
            time.sleep(pace_s)
    assert producer.flush(60) == 0
    assert not errors, errors
    return out


class BackgroundProducer(threading.Thread):
    """Produces while the consumer runs; ``result`` holds the delivered records."""

    def __init__(self, bootstrap: str, topic: str, n: int, **kw: object) -> None:
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, n)
        self.kw = kw
        self.result: dict[tuple[int, int], bytes] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = produce(*self.args, **self.kw)  # type: ignore[arg-type]
        except BaseException as exc:
            self.error = exc


def start_live(job: JobSpec, *extra: str) -> subprocess.Popen[bytes]:
    """``seamline live JOB`` as a subprocess (logs to a file next to the job)."""
    log = open(job.base_dir / "live.log", "ab")  # noqa: SIM115
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [SEAMLINE, "--log-level", "INFO", "live", str(job.base_dir / "job.toml"), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def stop_live(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM and wait; returns the exit code."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def table_rows(job: JobSpec) -> list[tuple[int, int]]:
    """Every ``(partition, offset)`` in the table (duplicates kept)."""
    from coordinator.service import open_catalog

    table = open_catalog(job).load_table(str(job.table.identifier))
    data = table.scan(selected_fields=("_kafka_partition", "_kafka_offset")).to_arrow()
    return list(
        zip(
            data["_kafka_partition"].to_pylist(),
            data["_kafka_offset"].to_pylist(),
            strict=True,
        )
    )


def table_offsets(job: JobSpec) -> dict[int, int]:
    """The table's committed live offsets (``{}`` before the first commit)."""
    from backfill.sinks.iceberg.live import live_offsets_from_properties
    from coordinator.service import open_catalog

    catalog = open_catalog(job)
    ident = str(job.table.identifier)
    if not catalog.table_exists(ident):
        return {}
    props = catalog.load_table(ident).metadata.properties
    return {int(p): int(o) for p, o in live_offsets_from_properties(props).items()}


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``pred`` every half second; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def log_count(job: JobSpec, needle: str) -> int:
    """How often ``needle`` appears in the live subprocess log."""
    path = job.base_dir / "live.log"
    return path.read_text(errors="replace").count(needle) if path.exists() else 0


def ends(delivered: dict[tuple[int, int], bytes]) -> dict[int, int]:
    """Next offset per partition after the delivered records."""
    out: dict[int, int] = {}
    for p, o in delivered:
        out[p] = max(out.get(p, 0), o + 1)
    return out
