"""The demo's workdir, its job file, and the history it seeds (archive files and topic records).

The job file written here is a real one: ``seamline plan|run|live|reconcile JOB`` work on it
after the demo, and it is the README walkthrough's example.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core.errors import ConfigError, SourceError
from coordinator.demo.data import ORDER_FIELDS, DemoWindow, orders, to_json_messages, write_archive
from stream.kafka import client

log = logging.getLogger(__name__)

TableFormat = Literal["iceberg", "lance"]
CatalogKind = Literal["sql", "rest"]
StorageKind = Literal["local", "s3"]
Executor = Literal["process", "ray"]  # [backfill] executor: where the slices run
JOB_ID = "demo-orders"
TOPIC_DAYS = 365
# The demo topic keeps everything: its records carry event-time timestamps up to a year old,
# which a time-based retention would delete at once.
TOPIC_CONFIG = {"retention.ms": "-1"}
PARTITIONS = 3
SEED = 7
_MARKER = ".seamline-demo"
# What a previous demo run left in the workdir (the broker data dir is kept: it is reused).
_OWNED = ("job.toml", "archive", "warehouse", "catalog.db", "orders.lance", ".seamline",
          "report.html", "demo.json", "live.log", "rest-catalog")  # fmt: skip
#: The environment variable the demo's job file reads the S3 secret key from (never written).
S3_SECRET_ENV = "SEAMLINE_DEMO_S3_SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class DemoServices:
    """The servers a demo's table uses: a REST catalog and/or an S3 bucket (else embedded)."""

    rest_uri: str | None = None
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_bucket: str | None = None


@dataclass(frozen=True)
class DemoPaths:
    """Every path the demo uses, all under one workdir."""

    root: Path

    @property
    def job(self) -> Path:
        """The job file."""
        return self.root / "job.toml"

    @property
    def archive(self) -> Path:
        """Monthly Parquet files with the oldest history."""
        return self.root / "archive"

    @property
    def warehouse(self) -> Path:
        """The Iceberg warehouse (data and metadata files)."""
        return self.root / "warehouse"

    @property
    def catalog(self) -> Path:
        """The Iceberg SQL catalog (SQLite)."""
        return self.root / "catalog.db"

    @property
    def rest_catalog(self) -> Path:
        """The local REST catalog's data dir (``--catalog rest``; fresh every run)."""
        return self.root / "rest-catalog"

    @property
    def s3(self) -> Path:
        """The local S3 server's data dir (``--storage s3``; buckets are per run)."""
        return self.root / "s3"

    @property
    def broker(self) -> Path:
        """The local broker's data dir (when the demo starts one)."""
        return self.root / "broker"

    @property
    def html(self) -> Path:
        """The HTML reconciliation report."""
        return self.root / "report.html"

    @property
    def pids(self) -> Path:
        """``demo.json``: the processes the demo started (for tests and for the curious)."""
        return self.root / "demo.json"

    @property
    def live_log(self) -> Path:
        """The live consumer's log."""
        return self.root / "live.log"


def prepare_workdir(root: Path) -> DemoPaths:
    """Create ``root`` (or clean what an earlier demo left there) and mark it as the demo's.

    Raises ``ConfigError`` for a non-empty folder the demo did not create (nothing is deleted).
    """
    root = root.resolve()
    if root.exists() and any(root.iterdir()) and not (root / _MARKER).exists():
        raise ConfigError(
            f"workdir={root}: expected an empty folder or one made by seamline demo, found "
            "other files",
            hint="pass --workdir with a new or empty folder",
        )
    root.mkdir(parents=True, exist_ok=True)
    for name in _OWNED:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (root / _MARKER).write_text("made by `seamline demo`; it may delete its own files here\n")
    paths = DemoPaths(root)
    paths.warehouse.mkdir()
    return paths


def new_topic_name() -> str:
    """A fresh topic per run: a re-run never sees an earlier run's records."""
    return f"demo-orders-{uuid.uuid4().hex[:8]}"


def _table_section(fmt: TableFormat, paths: DemoPaths, services: DemoServices) -> str:
    if fmt == "iceberg":
        return f"""[table]
format = "iceberg"
identifier = "demo.orders"                  # namespace.table in the catalog
{_catalog_line(paths, services)}
key = ["order_id"]
partition_by = "day"                        # day(ts): archive months and live days prune well
{_storage_section(services)}"""
    if services.s3_bucket is not None:
        return f"""[table]
format = "lance"
uri = "s3://{services.s3_bucket}/orders.lance"  # a dataset on the S3 server
key = ["order_id"]
{_storage_section(services)}"""
    return """[table]
format = "lance"
uri = "orders.lance"                        # relative to this file
key = ["order_id"]
"""


def _catalog_line(paths: DemoPaths, services: DemoServices) -> str:
    warehouse = (f"s3://{services.s3_bucket}/warehouse" if services.s3_bucket
                 else paths.warehouse.as_uri())
    if services.rest_uri is not None:  # the warehouse is the REST server's (files or S3)
        return (f'catalog = {{ type = "rest", uri = "{services.rest_uri}" }}'
                "  # `seamline catalog start`")
    return (f'catalog = {{ type = "sql", uri = "sqlite:///{paths.catalog}", '
            f'warehouse = "{warehouse}" }}  # pyiceberg SQL catalog (SQLite here)')


def _storage_section(services: DemoServices) -> str:
    if services.s3_endpoint is None:
        return ""
    return f"""
[table.storage]                             # S3-compatible object storage (`seamline s3 start`)
endpoint = "{services.s3_endpoint}"
region = "{services.s3_region}"
access_key_id = "{services.s3_access_key_id}"
secret_access_key = "${{{S3_SECRET_ENV}}}"  # read from the environment, never written here
path_style = true
commit_lock = "host"                        # Lance: S3Proxy's conditional put is not atomic
"""


def render_job(fmt: TableFormat, paths: DemoPaths, bootstrap: str, topic: str,
               services: DemoServices = DemoServices(), executor: Executor = "process") -> str:
    """The job file's text (annotated: the README shows it)."""
    ray = ('executor = "ray"                            # slices as Ray tasks on a local Ray\n'
           if executor == "ray" else "")
    fields = "\n".join(f'{name} = "{kind}"' for name, kind in ORDER_FIELDS.items())
    article = "an Iceberg" if fmt == "iceberg" else "a Lance"
    return f"""# A seamline job: onboard the `{topic}` topic into {article} table.
# History = the archive (monthly Parquet files) + the topic's retained records below the cut;
# live = the topic from the cut onwards. `seamline run` loads history in parallel slices,
# `seamline live` keeps consuming, `seamline reconcile` proves every record is there once.

[job]
id = "{JOB_ID}"

[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "seamline-{JOB_ID}-live"     # the live consumer's group (monitoring only)

[schema]
event_time = "ts"                           # decides the day/month a row belongs to
required = ["order_id"]
[schema.fields]
{fields}

{_table_section(fmt, paths, services)}
[history]
kafka = true                                # the topic's retained range [log_start, hwm)
[[history.archive]]
glob = "archive/*.parquet"                  # older than the topic's retention
format = "parquet"
bucket = "month"                            # one slice per month of event time

[transform]
function = "coordinator.demo.data:normalise"  # Arrow in, Arrow out: same on both sides

[backfill]
mode = "overwrite"                          # replace exactly each slice's scope, idempotent
slice_records = 10000                       # Kafka slices: ~10k offsets per partition range
concurrency = 2                             # worker processes
committer = "coordinator"                   # workers stage slices, the coordinator commits
commit_batch_slices = 8                     # ... up to 8 of them per table commit
lag_threshold = 5000                        # pause history slices while live lags more
{ray}
[live]
batch_records = 5000
batch_seconds = 1.0
min_commit_seconds = 2.0                    # few live commits: room for backfill overwrites

# [state] url defaults to a SQLite file: .seamline/{JOB_ID}.db next to this file
"""


@dataclass(frozen=True)
class Seeded:
    """What the demo's history holds before the live stream starts."""

    archive_rows: int
    archive_files: int
    topic_records: int
    next_order_id: int
    window: DemoWindow


def _produce_all(bootstrap: str, topic: str, table: pa.Table) -> int:
    errors: list[str] = []

    def done(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    # log_level 3: no "coordinator load in progress" retry warnings on a fresh broker
    producer = client.producer(
        client.plain(bootstrap),
        extras={"linger.ms": 50, "acks": "all", "enable.idempotence": True, "log_level": 3},
    )
    count = 0
    # Kafka record timestamps = event times, as if each order had been produced when it
    # happened (``seamline reprocess`` finds an event-time range's offsets by timestamp).
    stamps = table["ts"].cast(pa.int64()).to_pylist()
    for (key, value), ts in zip(to_json_messages(table), stamps, strict=True):
        while True:
            try:
                producer.produce(topic, key=key, value=value, timestamp=ts, on_delivery=done)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
        if count % 5000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    if left or errors:
        raise SourceError(
            f"topic={topic}: expected every history record delivered, found {left} pending "
            f"and {len(errors)} failed ({errors[:1]})",
            hint="check the broker log",
        )
    return count


def seed_history(paths: DemoPaths, bootstrap: str, topic: str, rows: int) -> Seeded:
    """Three years of orders: the oldest part as monthly Parquet, the newest in the topic."""
    window = DemoWindow.three_years(datetime.now(UTC), topic_days=TOPIC_DAYS)
    history = orders(0, rows, window.start, window.end, SEED)
    split = pa.scalar(window.archive_end, pa.timestamp("ms", tz="UTC"))
    old = history.filter(pc.less(history["ts"], split))
    new = history.filter(pc.greater_equal(history["ts"], split))
    files = write_archive(old, paths.archive)
    produced = _produce_all(bootstrap, topic, new)
    log.info("seeded archive_rows=%d files=%d topic_records=%d topic=%s",
             old.num_rows, len(files), produced, topic)  # fmt: skip
    return Seeded(old.num_rows, len(files), produced, rows, window)


def execute_slice_quietly(job: Any, slice_: Any, token: Any) -> Any:
    """The standard slice executor, with pyiceberg's commit-retry warnings kept off the screen.

    Retries on a concurrent live commit are expected under a live stream (the writer retries
    them); the demo's output stays readable. Runs in the runner's worker processes.
    """
    from backfill.executor import execute_slice

    logging.getLogger("pyiceberg.table").setLevel(logging.ERROR)
    return execute_slice(job, slice_, token)
