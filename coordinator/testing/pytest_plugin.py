"""Seamline's pytest plugin (entry point ``seamline``): a real Kafka broker, fresh topics, a
local Iceberg catalog and a Lance dataset path for tests.

Fixtures:

* ``kafka_broker`` (session) -> :class:`stream.broker.provide.BrokerHandle`;
  ``kafka_bootstrap`` (session) -> ``"host:port"``. The broker is ``KAFKA_BOOTSTRAP`` when set,
  else a Kafka container when Docker answers, else a local broker in a session temp dir,
  stopped at session end. When none can be provided the tests using it FAIL with the reason.
* ``kafka_topic`` -> :class:`TopicFactory`: ``kafka_topic(partitions=3, name_prefix=None)``
  creates a fresh uniquely named topic, waits for its leaders, returns its name; the topics
  are deleted at teardown.
* ``iceberg_catalog`` -> a pyiceberg ``SqlCatalog`` (sqlite + local file warehouse under
  ``tmp_path``).
* ``s3_server`` (session) -> :class:`backfill.sinks.s3_server.local.S3Server` (``.endpoint``,
  ``.storage()`` for a job's ``[table.storage]``, ``create_bucket(server, name)``): a local
  S3-compatible server (S3Proxy on files, ``seamline s3``), stopped at session end. It FAILS
  (never skips) when Java or Maven are missing.
* ``iceberg_rest_catalog`` (session) -> :class:`RestCatalogServer` (``.uri``,
  ``.warehouse``): a local Apache Iceberg REST catalog (``seamline catalog``) whose warehouse
  is a bucket on ``s3_server`` (``s3://seamline-rest/warehouse``), stopped at session end. It
  FAILS (never skips) when Java, javac or Maven are missing.
* ``lance_uri`` -> a fresh, not yet existing dataset path under ``tmp_path``.
* ``kill_at`` -> :class:`KillAt`: ``kill_at(point, fmt="lance", mode="overwrite", seed=0,
  table=None)`` (``table``: Iceberg ``[table]`` lines for another catalog) runs one fault trial (``coordinator.testing.soak``) on a fresh 2-partition topic: the crash
  point armed in every ``seamline`` process, restarts until done, then the independent oracle
  (``coordinator.testing.oracle``); returns the ``TrialResult``.
  ``kill_at.run(job, point, *args)`` runs ``seamline run`` on a :class:`JobFile` of your own
  with ``point`` armed once across the coordinator and its workers (the process reaching it
  dies by SIGKILL), re-runs it unchanged until it exits 0 and returns a ``KilledRun``
  (``.died_at``, ``.exit_codes``, ``.restarts``, ``.outcome``: the final run's JSON).
* ``seamline_job`` -> :class:`JobFactory`: ``seamline_job(table_format="lance", topic=None,
  partitions=3, **sections)`` writes a job file under ``tmp_path`` (a fresh topic on the
  session broker unless ``topic`` is given, the table and the state store under ``tmp_path``,
  fields ``id: int64, ts: timestamp_ms``) with ``sections`` merged over it (e.g.
  ``backfill={"slice_records": 5}``, ``history={"archive": [{"glob": "archive/*.parquet"}]}``)
  and returns a :class:`JobFile` (``.path``, ``.spec``, ``.topic``).
* ``seamline_producer`` -> :class:`Producer`: ``produce(topic, records, partition=None)``
  sends dicts as JSON (idempotent), flushes and returns their ``(partition, offset)``.
* ``seamline_live`` -> ``start(job)``: a running ``seamline live`` process for a
  :class:`JobFile` (its cut is taken first if missing); ``.stop()`` sends SIGTERM and returns
  the exit code; every consumer still running is stopped at teardown.

Heavy libraries are imported inside the fixtures, so loading the plugin stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog

    from backfill.sinks.iceberg.rest_server.local import RestCatalogServer
    from backfill.sinks.s3_server.local import S3Server
    from coordinator.core.jobspec import JobSpec
    from coordinator.testing.soak import KilledRun, TrialResult
    from stream.broker.provide import BrokerHandle

log = logging.getLogger(__name__)

_MAX_PREFIX = 60


class TopicFactory(Protocol):
    """The ``kafka_topic`` fixture: create a fresh topic and return its name."""

    def __call__(self, partitions: int = 3, name_prefix: str | None = None, *,
                 config: Mapping[str, str] | None = None) -> str:
        """Create a topic named ``<prefix>-<random>`` with ``partitions`` partitions."""
        ...


def pytest_report_header(config: pytest.Config) -> str:
    """Say which Kafka the session will use."""
    env = os.environ.get("KAFKA_BOOTSTRAP")
    source = f"KAFKA_BOOTSTRAP={env}" if env else (
        f"container or local broker (SEAMLINE_KAFKA={os.environ.get('SEAMLINE_KAFKA', 'auto')})")
    return f"seamline: kafka from {source}"


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """A serving Kafka broker for the whole session (fails the test if none can be provided)."""
    from coordinator.core.errors import BrokerError
    from stream.broker.provide import provide_broker

    data_dir = tmp_path_factory.mktemp("kafka-broker")
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(provide_broker(data_dir))
        except BrokerError as exc:
            pytest.fail(f"no Kafka broker for the tests: {exc}", pytrace=False)
        yield handle


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: BrokerHandle) -> str:
    """``host:port`` of the session's Kafka broker."""
    return kafka_broker.bootstrap


def topic_prefix(text: str) -> str:
    """A legal Kafka topic-name prefix derived from ``text`` (e.g. a test name).

    >>> topic_prefix("test_x[3-part/é]")
    'test_x-3-part'
    """
    cleaned = re.sub(r"[^a-zA-Z0-9._-]+", "-", text).strip("-.")
    return cleaned[:_MAX_PREFIX].strip("-.") or "topic"


@pytest.fixture
def kafka_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """Factory creating fresh topics on the session broker; deletes them at teardown.

    Test topics keep every record unless ``config`` says otherwise (``retention.ms = -1``):
    test data often carries event-time timestamps older than the broker's default 7-day
    retention, which would delete it in the middle of a slow test.
    """
    from stream.broker.admin import create_topic, delete_topics

    created: list[str] = []

    def make_topic(partitions: int = 3, name_prefix: str | None = None, *,
                   config: Mapping[str, str] | None = None) -> str:
        name = f"{topic_prefix(name_prefix or request.node.name)}-{uuid.uuid4().hex[:10]}"
        create_topic(kafka_bootstrap, name, partitions=partitions,
                     config={"retention.ms": "-1", **(config or {})})  # fmt: skip
        created.append(name)
        return name

    yield make_topic
    try:
        delete_topics(kafka_bootstrap, created, timeout=10.0)
    except Exception as exc:  # teardown is best effort: a leftover topic is harmless
        log.warning("could not delete test topics %s: %s", created, exc)


@pytest.fixture
def iceberg_catalog(tmp_path: Path) -> Iterator[SqlCatalog]:
    """A pyiceberg ``SqlCatalog`` named ``seamline_test`` on sqlite, warehouse under tmp_path."""
    from pyiceberg.catalog.sql import SqlCatalog

    root = tmp_path / "iceberg"
    warehouse = root / "warehouse"
    warehouse.mkdir(parents=True)
    catalog = SqlCatalog("seamline_test", uri=f"sqlite:///{root / 'catalog.db'}",
                         warehouse=warehouse.as_uri())
    yield catalog
    catalog.engine.dispose()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A serving local S3-compatible server for the session (fails loudly if none can start)."""
    from backfill.sinks.s3_server.local import start_s3, stop_s3
    from coordinator.core.errors import ServiceError

    data_dir = tmp_path_factory.mktemp("s3")
    try:
        server = start_s3(data_dir)
    except ServiceError as exc:
        pytest.fail(f"no S3 server for the tests: {exc}", pytrace=False)
    try:
        yield server
    finally:
        stop_s3(data_dir)


REST_BUCKET = "seamline-rest"


@pytest.fixture(scope="session")
def iceberg_rest_catalog(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> Iterator[RestCatalogServer]:
    """A serving local Iceberg REST catalog for the session, its warehouse on ``s3_server``
    (fails loudly if none can start)."""
    from backfill.sinks.iceberg.rest_server.local import start_catalog, stop_catalog
    from backfill.sinks.s3_server.local import create_bucket
    from coordinator.core.errors import ServiceError

    data_dir = tmp_path_factory.mktemp("iceberg-rest")
    try:
        bucket = create_bucket(s3_server, REST_BUCKET)
        server = start_catalog(
            data_dir, warehouse=f"{bucket}/warehouse", properties=s3_server.iceberg_properties()
        )
    except ServiceError as exc:
        pytest.fail(f"no Iceberg REST catalog for the tests: {exc}", pytrace=False)
    try:
        yield server
    finally:
        stop_catalog(data_dir)


@pytest.fixture
def lance_uri(tmp_path: Path) -> str:
    """A fresh path for a Lance dataset (its parent exists, the dataset does not)."""
    parent = tmp_path / "lance"
    parent.mkdir()
    return str(parent / "table.lance")


class KillAt(Protocol):
    """The ``kill_at`` fixture: one fault trial at a crash point, ended by the oracle."""

    def __call__(self, point: str, fmt: str = "lance", mode: str = "overwrite",
                 seed: int = 0, table: str | None = None) -> TrialResult:
        """Run the trial and return where it died, what restarted and the oracle's report
        (``table``: Iceberg ``[table]`` lines naming another catalog, e.g. a REST one)."""
        ...

    def run(self, job: JobFile, point: str, *args: str, attempts: int = 4) -> KilledRun:
        """``seamline run`` of ``job`` with ``point`` armed once, re-run until it exits 0."""
        ...
# -- jobs, producers and live consumers for users' own integration tests -----------------------


def toml_text(doc: Mapping[str, Any], prefix: str = "") -> str:
    """A TOML document of plain values, tables and arrays of tables (what job files use).

    >>> print(toml_text({"job": {"id": "x"}, "history": {"archive": [{"glob": "a/*"}]}}), end="")
    [job]
    id = "x"
    [history]
    [[history.archive]]
    glob = "a/*"
    """
    lines: list[str] = []
    tables: list[str] = []
    for key, value in doc.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            tables.append(f"[{name}]\n" + toml_text(value, name))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables += [f"[[{name}]]\n" + toml_text(v, name) for v in value]
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "".join(line + "\n" for line in lines) + "".join(tables)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = _merge(out[key], value) if nested else value
    return out


def _table_section(root: Path, table_format: str) -> dict[str, Any]:
    if table_format == "lance":
        return {"format": "lance", "uri": str(root / "table.lance")}
    if table_format != "iceberg":
        raise ValueError(f"table_format: expected 'iceberg' or 'lance', found {table_format!r}")
    (root / "warehouse").mkdir(parents=True, exist_ok=True)
    return {"format": "iceberg", "identifier": "seamline_test.events",
            "catalog_uri": f"sqlite:///{root / 'catalog.db'}",
            "warehouse": (root / "warehouse").as_uri(), "partition_by": "none"}  # fmt: skip


@dataclass(frozen=True)
class JobFile:
    """A job file written by ``seamline_job``: its path, the validated spec and its topic."""

    path: Path
    spec: JobSpec
    topic: str


def write_job_file(
    root: Path, bootstrap: str, topic: str, *, table_format: str = "lance",
    job_id: str = "orders", **sections: Any,
) -> JobFile:  # fmt: skip
    """Write ``<root>/job.toml`` (defaults below, ``sections`` merged over them)."""
    from coordinator.core.jobspec import load_job

    root.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "job": {"id": job_id},
        "stream": {"bootstrap": bootstrap, "topic": topic, "group": f"{topic}-live"},
        "schema": {"event_time": "ts", "fields": {"id": "int64", "ts": "timestamp_ms"}},
        "table": _table_section(root, table_format),
        "backfill": {"slice_records": 1000, "concurrency": 2, "max_attempts": 3},
        "live": {"batch_records": 1000, "batch_seconds": 0.3, "min_commit_seconds": 0.1},
        "state": {"url": f"sqlite:///{root / 'state.db'}"},
    }
    path = root / "job.toml"
    path.write_text(toml_text(_merge(doc, sections)), encoding="utf-8")
    return JobFile(path, load_job(path), topic)


class JobFactory(Protocol):
    """The ``seamline_job`` fixture."""

    def __call__(self, table_format: str = "lance", topic: str | None = None,
                 partitions: int = 3, **sections: Any) -> JobFile:
        """Write a job file (a fresh topic unless ``topic``); see the module doc."""
        ...


class _KillAt:
    """The ``kill_at`` fixture's value (see :class:`KillAt`)."""

    def __init__(self, bootstrap: str, topics: TopicFactory, root: Path) -> None:
        self._bootstrap, self._topics, self._root = bootstrap, topics, root

    def __call__(self, point: str, fmt: str = "lance", mode: str = "overwrite",
                 seed: int = 0, table: str | None = None) -> TrialResult:
        from coordinator.testing.soak import PARTITIONS, TrialSpec, run_trial

        root = self._root / f"{point}-{fmt}-{mode}-{seed}"
        root.mkdir()
        topic = self._topics(PARTITIONS)
        spec = TrialSpec(point, fmt, mode, seed, table=table)
        return run_trial(spec, root, self._bootstrap, topic)

    def run(self, job: JobFile, point: str, *args: str, attempts: int = 4) -> KilledRun:
        from coordinator.testing.soak import run_killed

        return run_killed(job.path, point, args=args, attempts=attempts)


@pytest.fixture
def kill_at(kafka_bootstrap: str, kafka_topic: TopicFactory, tmp_path: Path) -> KillAt:
    """Fault trials on the session broker (each on a fresh topic under ``tmp_path``), and
    ``kill_at.run(job, point)``: a user's own job run with a crash point armed."""
    return _KillAt(kafka_bootstrap, kafka_topic, tmp_path)


@pytest.fixture
def seamline_job(kafka_bootstrap: str, kafka_topic: TopicFactory, tmp_path: Path) -> JobFactory:
    """Factory writing job files for the session broker, tables and state under tmp_path."""

    def make(table_format: str = "lance", topic: str | None = None, partitions: int = 3,
             **sections: Any) -> JobFile:  # fmt: skip
        name = topic or kafka_topic(partitions)
        return write_job_file(tmp_path / "job", kafka_bootstrap, name,
                              table_format=table_format, **sections)  # fmt: skip

    return make


class Producer:
    """The ``seamline_producer`` fixture: JSON records to the session broker."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Producer as KafkaProducer

        self._producer = KafkaProducer({"bootstrap.servers": bootstrap,
                                        "enable.idempotence": True})  # fmt: skip

    def produce(self, topic: str, records: Iterable[Mapping[str, Any]],
                partition: int | None = None) -> list[tuple[int, int]]:  # fmt: skip
        """Send ``records`` as JSON, flush, and return each one's ``(partition, offset)``."""
        delivered: list[tuple[int, int]] = []
        errors: list[str] = []

        def done(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                delivered.append((msg.partition(), msg.offset()))

        for rec in records:
            kw: dict[str, Any] = {} if partition is None else {"partition": partition}
            self._producer.produce(topic, json.dumps(rec).encode(), on_delivery=done, **kw)
        left = self._producer.flush(30)
        if errors or left:
            raise RuntimeError(f"expected every record delivered, found {left} left: {errors}")
        return delivered


@pytest.fixture
def seamline_producer(kafka_bootstrap: str) -> Producer:
    """A JSON producer on the session broker."""
    return Producer(kafka_bootstrap)


@dataclass
class LiveProcess:
    """A running ``seamline live`` for one job (stopped at teardown at the latest)."""

    job: JobFile
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (flush, commit, exit 0), wait, and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    @property
    def log(self) -> str:
        """What the consumer wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def seamline_live(tmp_path: Path) -> Iterator[Callable[[JobFile], LiveProcess]]:
    """``start(job)``: take the job's cut if missing, then run ``seamline live`` on it."""
    from coordinator.run.prepare import ensure_cut

    started: list[LiveProcess] = []

    def start(job: JobFile) -> LiveProcess:
        ensure_cut(job.spec)
        log_path = tmp_path / f"live-{len(started)}.log"
        exe = Path(sys.executable).parent / "seamline"
        with log_path.open("wb") as err:
            proc = subprocess.Popen([str(exe), "live", str(job.path)],
                                    stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        started.append(LiveProcess(job, proc, log_path))
        return started[-1]

    yield start
    for live in started:
        live.stop()
