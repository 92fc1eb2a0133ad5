"""The demo's JSON names the table so anyone can open it, without leaking a catalog password."""

from __future__ import annotations

from pathlib import Path

from coordinator.core.jobspec import parse_job
from coordinator.demo.report import table_json


def test_table_json_masks_the_catalog_password(tmp_path: Path) -> None:
    doc = {
        "stream": {"bootstrap": "127.0.0.1:9092", "topic": "orders"},
        "schema": {"fields": {"id": "int64", "ts": "timestamp_ms"}, "event_time": "ts"},
        "table": {
            "format": "iceberg",
            "identifier": "shop.orders",
            "catalog_uri": "postgresql+psycopg://app:hunter2@db:5432/catalog",
            "warehouse": "s3://bucket/wh",
        },
    }
    job = parse_job(doc, base_dir=tmp_path, default_id="orders")
    out = table_json(job)
    assert out["catalog_uri"] == "postgresql+psycopg://app:***@db:5432/catalog"
    assert "hunter2" not in repr(out)
    assert out["identifier"] == "shop.orders" and out["warehouse"] == "s3://bucket/wh"
