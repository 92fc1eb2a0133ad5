"""The plugin's table fixtures give a working Iceberg catalog and a fresh Lance path."""

from __future__ import annotations

from pathlib import Path

import lance
import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from coordinator.testing.pytest_plugin import TopicFactory

pytestmark = pytest.mark.integration


def test_iceberg_catalog_creates_appends_and_reads(iceberg_catalog: SqlCatalog) -> None:
    rows = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]})
    iceberg_catalog.create_namespace("ns")
    table = iceberg_catalog.create_table("ns.t", schema=rows.schema)
    table.append(rows)
    assert table.scan().to_arrow().sort_by("id").equals(rows)
    assert table.metadata.location.startswith("file://")


def test_lance_uri_is_fresh_and_writable(lance_uri: str) -> None:
    assert not Path(lance_uri).exists() and Path(lance_uri).parent.is_dir()
    lance.write_dataset(pa.table({"id": [1, 2]}), lance_uri)
    assert lance.dataset(lance_uri).count_rows() == 2


def test_kafka_topic_names_are_unique_and_partitioned(
        kafka_bootstrap: str, kafka_topic: TopicFactory) -> None:
    from confluent_kafka.admin import AdminClient

    first, second = kafka_topic(), kafka_topic(partitions=1, name_prefix="orders")
    assert first != second and second.startswith("orders-")
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert (len(topics[first].partitions), len(topics[second].partitions)) == (3, 1)
