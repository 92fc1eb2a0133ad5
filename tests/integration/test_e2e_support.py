"""Helpers of the end-to-end tests (no tests here): job files on Iceberg and Lance, demo order
data in an archive and a topic, a producer thread, ``seamline`` subprocesses, and transforms."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Producer

from coordinator.core.jobspec import JobSpec, load_job
from coordinator.demo.data import ORDER_FIELDS, orders, to_json_messages, write_archive

REPO = Path(__file__).resolve().parents[2]
SEAMLINE = str(Path(sys.executable).parent / "seamline")
PARTITIONS = 3

# The week whose amounts the buggy transform multiplies by 100 (see ``buggy``).
BUG_FROM = datetime(2024, 3, 28, tzinfo=UTC)
BUG_TO = BUG_FROM + timedelta(days=7)
ARCHIVE_FROM = datetime(2024, 1, 1, tzinfo=UTC)
TOPIC_FROM = datetime(2024, 4, 1, tzinfo=UTC)  # archive [ARCHIVE_FROM, TOPIC_FROM)
TOPIC_TO = datetime(2024, 5, 15, tzinfo=UTC)
LIVE_FROM = datetime(2024, 6, 1, tzinfo=UTC)


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def buggy(batch: pa.Table) -> pa.Table:
    """The incident: amounts of orders in ``[BUG_FROM, BUG_TO)`` multiplied by 100."""
    ts = batch.column("ts")
    in_week = pc.and_(
        pc.greater_equal(ts, pa.scalar(BUG_FROM, ts.type)),
        pc.less(ts, pa.scalar(BUG_TO, ts.type)),
    )
    amount = batch.column("amount")
    fixed = pc.if_else(in_week, pc.multiply(amount, 100.0), amount)
    i = batch.schema.get_field_index("amount")
    return batch.set_column(i, batch.schema.field(i), fixed)


def fixed(batch: pa.Table) -> pa.Table:
    """The repaired transform (identity)."""
    return batch


TRANSFORMS = "tests.integration.test_e2e_support"


def job_toml(
    root: Path,
    fmt: str,
    bootstrap: str,
    topic: str,
    *,
    transform: str | None = None,
    slice_records: int = 100,
    lag_threshold: int = 100_000,
    live_extra: str = "",
) -> str:
    fields = "\n".join(f'{k} = "{v}"' for k, v in ORDER_FIELDS.items())
    if fmt == "iceberg":
        table = (
            f'format = "iceberg"\nidentifier = "e2e.orders"\n'
            f'catalog_uri = "sqlite:///{root}/catalog.db"\nwarehouse = "{root}/warehouse"'
        )
    else:
        table = f'format = "lance"\nuri = "{root}/orders.lance"'
    tf = f'[transform]\nfunction = "{transform}"\n' if transform else ""
    return f"""[job]
id = "e2e"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "{topic}-live"
[schema]
event_time = "ts"
required = ["order_id", "ts"]
[schema.fields]
{fields}
[table]
{table}
partition_by = "day"
[history]
kafka = true
[[history.archive]]
glob = "{root}/archive/*.parquet"
format = "parquet"
bucket = "month"
{tf}[backfill]
slice_records = {slice_records}
concurrency = 2
max_attempts = 5
lag_threshold = {lag_threshold}
[live]
batch_records = 2000
batch_seconds = 0.5
min_commit_seconds = 0.5
{live_extra}[state]
url = "sqlite:///{root}/state.db"
"""


def write_job(root: Path, fmt: str, bootstrap: str, topic: str, **kw: Any) -> JobSpec:
    (root / "warehouse").mkdir(parents=True, exist_ok=True)
    path = root / "job.toml"
    path.write_text(job_toml(root, fmt, bootstrap, topic, **kw), encoding="utf-8")
    return load_job(path)


def job_path(job: JobSpec) -> str:
    return str(job.base_dir / "job.toml")


@dataclass(frozen=True)
class History:
    """What was put in the archive and the topic before the cut."""

    archive: pa.Table
    topic: pa.Table
    delivered: dict[tuple[int, int], int]  # (partition, offset) -> order_id


def produce_rows(
    bootstrap: str, topic: str, rows: pa.Table, *, record_ts: bool
) -> dict[tuple[int, int], int]:
    """Produce ``rows`` (partition = order_id % 3), Kafka timestamp = event time if asked."""
    out: dict[tuple[int, int], int] = {}
    errors: list[str] = []

    def done(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            out[(msg.partition(), msg.offset())] = int(msg.key())

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    stamps = rows.column("ts").cast(pa.int64()).to_pylist()
    for (key, value), ms in zip(to_json_messages(rows), stamps, strict=True):
        kw = {"timestamp": ms} if record_ts else {}
        producer.produce(
            topic, value, key=key, partition=int(key) % PARTITIONS, on_delivery=done, **kw
        )
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors
    return out


def load_history(
    root: Path, bootstrap: str, topic: str, archive_n: int = 900, topic_n: int = 1200
) -> History:
    """Archive Parquet files (three months) and a retained topic range (six weeks)."""
    archive = orders(1, archive_n, ARCHIVE_FROM, TOPIC_FROM, seed=7)
    write_archive(archive, root / "archive")
    recent = orders(archive_n + 1, topic_n, TOPIC_FROM, TOPIC_TO, seed=8)
    delivered = produce_rows(bootstrap, topic, recent, record_ts=True)
    return History(archive, recent, delivered)


class LiveProducer(threading.Thread):
    """Produces live orders at a steady pace until stopped."""

    def __init__(self, bootstrap: str, topic: str, first_id: int, per_second: float = 10.0):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.first_id = bootstrap, topic, first_id
        self.per_second = per_second
        self.stop = threading.Event()
        self.delivered: dict[tuple[int, int], int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            n = self.first_id
            while not self.stop.is_set():
                now = datetime.now(UTC)
                batch = orders(n, 4, LIVE_FROM, now, seed=n)
                self.delivered |= produce_rows(self.bootstrap, self.topic, batch, record_ts=False)
                n += 4
                self.stop.wait(4 / self.per_second)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> dict[tuple[int, int], int]:
        self.stop.set()
        self.join(60)
        assert self.error is None, self.error
        return self.delivered


def take_cut(job: JobSpec) -> None:
    """Take and store the job's cut in this process: what ``seamline cut JOB`` does, as test
    set-up, without a CLI process start-up (~3 s of imports). The command itself is tested
    as a process in ``test_cli_jobs.py``, ``test_seam_operator.py`` and the onboarding e2e."""
    from coordinator.run.prepare import ensure_cut

    ensure_cut(job, transform=False)


def seamline(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEAMLINE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def start(
    job: JobSpec, *args: str, log_name: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``seamline ARGS`` in its own process group, output to a log file next to the job
    (``env``: more environment variables)."""
    log = open(job.base_dir / log_name, "ab")  # noqa: SIM115
    return subprocess.Popen(
        [SEAMLINE, "--log-level", "INFO", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """``kill -9`` the process and everything it started (its worker processes)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@contextlib.contextmanager
def live_consumer(job: JobSpec) -> Iterator[subprocess.Popen[bytes]]:
    """``seamline live JOB`` running for the duration of the block (stopped with SIGTERM)."""
    proc = start(job, "live", job_path(job), log_name="live.log")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                kill_group(proc)


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def ends_of(delivered: dict[tuple[int, int], int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for p, o in delivered:
        out[p] = max(out.get(p, 0), o + 1)
    return out


def json_out(res: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert res.stdout.strip(), res.stderr
    text = res.stdout.strip()
    try:
        doc: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError:
        doc = json.loads(text.splitlines()[-1])
    return doc


ZERO = {"lost": 0, "duplicated": 0, "phantom": 0, "overlap": 0, "gap": 0}


def counts(totals: dict[str, int]) -> dict[str, int]:
    return {k: totals[k] for k in ZERO}


def table_rows(job: JobSpec) -> pa.Table:
    """Every row of the job's table, sorted by lineage then order id."""
    from backfill.sinks import open_sink

    data = open_sink(job).scan()
    keys = [("_seamline_source", "ascending"), ("_kafka_partition", "ascending")]
    keys += [("_kafka_offset", "ascending"), ("order_id", "ascending")]
    return data.sort_by(keys)
