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
* ``iceberg_rest_catalog`` (session) -> :class:`RestCatalogServer` (``.uri``): a local Apache
  Iceberg REST catalog (``seamline catalog``) in a session temp dir, its warehouse under it,
  stopped at session end. It FAILS (never skips) when Java, javac or Maven are missing.
* ``s3_server`` (session) -> :class:`S3Server` (``.endpoint``, ``.storage()`` for a job's
  ``[table.storage]``, ``create_bucket``): a local S3-compatible server (S3Proxy on files,
  ``seamline s3``), stopped at session end; FAILS (never skips) without Java or Maven.
* ``lance_uri`` -> a fresh, not yet existing dataset path under ``tmp_path``.

Heavy libraries are imported inside the fixtures, so loading the plugin stays cheap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog

    from backfill.sinks.iceberg.rest_server.local import RestCatalogServer
    from backfill.sinks.s3_server.local import S3Server
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
    """Factory creating fresh topics on the session broker; deletes them at teardown."""
    from stream.broker.admin import create_topic, delete_topics

    created: list[str] = []

    def make_topic(partitions: int = 3, name_prefix: str | None = None, *,
                   config: Mapping[str, str] | None = None) -> str:
        name = f"{topic_prefix(name_prefix or request.node.name)}-{uuid.uuid4().hex[:10]}"
        create_topic(kafka_bootstrap, name, partitions=partitions, config=dict(config or {}))
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
def iceberg_rest_catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestCatalogServer]:
    """A serving local Iceberg REST catalog for the session (fails loudly if none can start)."""
    from backfill.sinks.iceberg.rest_server.local import start_catalog, stop_catalog
    from coordinator.core.errors import ServiceError

    data_dir = tmp_path_factory.mktemp("iceberg-rest")
    try:
        server = start_catalog(data_dir)
    except ServiceError as exc:
        pytest.fail(f"no Iceberg REST catalog for the tests: {exc}", pytrace=False)
    try:
        yield server
    finally:
        stop_catalog(data_dir)


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


@pytest.fixture
def lance_uri(tmp_path: Path) -> str:
    """A fresh path for a Lance dataset (its parent exists, the dataset does not)."""
    parent = tmp_path / "lance"
    parent.mkdir()
    return str(parent / "table.lance")
