"""``[table] catalog = {...}`` opens a real pyiceberg catalog through ``load_catalog``.

The table written through seamline is read back with an independent ``SqlCatalog`` on the same
SQLite file and warehouse: the new form and the legacy flat keys land in the same place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from backfill.sinks import open_catalog, open_sink
from coordinator.core import lineage
from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec, parse_job
from coordinator.core.values import Scope
from tests.contract.backfill_writers import Rows, token

pytestmark = pytest.mark.integration


def _job(root: Path, table: dict[str, Any]) -> JobSpec:
    doc = {
        "stream": {"bootstrap": "127.0.0.1:1", "topic": "orders"},
        "schema": {
            "fields": {"order_id": "int64", "amount": "float64", "ts": "timestamp_ms"},
            "required": ["order_id"],
            "event_time": "ts",
        },
        "table": {"format": "iceberg", "identifier": "cfg.orders", **table},
    }
    return parse_job(doc, base_dir=root, default_id="contract")


def _read_back(root: Path) -> pa.Table:
    independent = SqlCatalog("seamline", uri=f"sqlite:///{root / 'cat.db'}")
    return independent.load_table("cfg.orders").scan().to_arrow()


@pytest.mark.parametrize("form", ["catalog", "legacy"])
def test_a_slice_written_through_the_catalog_table_is_in_the_sql_catalog(
    tmp_path: Path, form: str
) -> None:
    (tmp_path / "wh").mkdir()
    uri = f"sqlite:///{tmp_path / 'cat.db'}"
    table: dict[str, Any] = (
        {"catalog": {"type": "sql", "uri": uri, "warehouse": "wh"}}
        if form == "catalog" else {"catalog_uri": uri, "warehouse": "wh"}
    )
    job = _job(tmp_path, table)
    sink = open_sink(job)
    sink.ensure_table()
    rows = Rows(base=0, partition=0, start=0, count=25)
    scope = Scope("kafka", ranges=(rows.range,))
    sink.write_slice(scope, rows.table("backfill"), token("k0", rows.range))
    back = _read_back(tmp_path)
    assert sorted(back.column("order_id").to_pylist()) == list(range(25))
    assert set(back.column(lineage.SIDE).to_pylist()) == {"backfill"}
    files = [p for p in (tmp_path / "wh").rglob("*.parquet")]
    assert files, "the relative warehouse resolves under the job file's folder"


def test_a_rest_catalog_that_is_not_there_fails_when_opened_not_silently(tmp_path: Path) -> None:
    job = _job(tmp_path, {"catalog": {"type": "rest", "uri": "http://127.0.0.1:9"}})
    with pytest.raises(Exception) as info:  # pyiceberg's own connection error
        open_catalog(job)
    assert not isinstance(info.value, ConfigError)
    assert "sqlalchemy" not in str(info.value)
