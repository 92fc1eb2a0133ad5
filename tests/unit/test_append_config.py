"""Append mode in the job file (pure): accepted with one history source, refused with both
an archive and the topic (an event in both would be written twice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec, parse_job


def job(history: dict[str, Any]) -> JobSpec:
    doc = {
        "stream": {"bootstrap": "127.0.0.1:9092", "topic": "orders"},
        "schema": {"event_time": "ts", "fields": {"id": "int64", "ts": "timestamp_ms"}},
        "table": {"format": "lance", "uri": "t.lance"},
        "history": history,
        "backfill": {"mode": "append"},
    }
    return parse_job(doc, base_dir=Path("/nonexistent-seamline"), default_id="orders")


def test_append_with_one_history_source_is_accepted() -> None:
    assert job({"kafka": True}).backfill.mode == "append"
    assert job({"kafka": False, "archive": [{"glob": "a/*.parquet"}]}).backfill.mode == "append"


def test_append_with_archive_and_kafka_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        job({"kafka": True, "archive": [{"glob": "a/*.parquet"}]})
    assert "key=backfill.mode: append mode needs history that cannot overlap" in str(info.value)
    assert 'use mode = "merge" with table.key' in str(info.value)
