"""``[backfill] publish`` in the job file and the publish state ``status`` shows (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec, parse_job
from coordinator.core.values import (
    CommitToken,
    Epoch,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
    Slice,
    SnapshotId,
)
from coordinator.run.publish import publish_slice_id, publish_state, publish_token
from coordinator.state.store import SliceRecord


def job(backfill: dict[str, Any], table: dict[str, Any] | None = None) -> JobSpec:
    doc = {
        "stream": {"bootstrap": "127.0.0.1:9092", "topic": "orders"},
        "schema": {"event_time": "ts", "fields": {"id": "int64", "ts": "timestamp_ms"}},
        "table": table or {"format": "lance", "uri": "t.lance"},
        "backfill": backfill,
    }
    return parse_job(doc, base_dir=Path("/nonexistent-seamline"), default_id="orders")


def test_publish_defaults_to_per_slice_and_accepts_atomic_with_overwrite_and_append() -> None:
    assert job({}).backfill.publish == "slice"
    assert job({"publish": "atomic"}).backfill.publish == "atomic"
    assert job({"publish": "atomic", "mode": "append"}).backfill.mode == "append"


def test_publish_atomic_with_merge_is_refused_and_unknown_values_too() -> None:
    with pytest.raises(ConfigError) as info:
        job({"publish": "atomic", "mode": "merge"}, {"format": "lance", "uri": "t.lance",
                                                       "key": ["id"]})  # fmt: skip
    assert 'key=backfill.publish: publish = "atomic" expected mode = "overwrite"' in str(
        info.value
    )
    with pytest.raises(ConfigError, match=r"backfill\.publish"):
        job({"publish": "later"})


def _record(slice_id: str, status: Any, staged: bool, snapshot: int | None = None) -> SliceRecord:
    return SliceRecord(
        Slice(slice_id, Scope("kafka", (OffsetRange(PartitionId(0), Offset(0), Offset(5)),))),
        Epoch(1), status, 1,
        snapshot_id=None if snapshot is None else SnapshotId(snapshot),
        staged={"files": []} if staged else None,
    )  # fmt: skip


def test_publish_state_is_staged_until_every_slice_is_published() -> None:
    assert publish_state([_record("a", "committed", False)]) is None  # per-slice job
    staged = [_record("a", "staged", True), _record("b", "failed", False)]
    assert publish_state(staged) == {"state": "staged", "staged": 1, "snapshot_id": None}
    done = [_record("a", "reconciled", True, 7), _record("b", "committed", True, 7)]
    assert publish_state(done) == {"state": "published", "staged": 0, "snapshot_id": 7}


def test_the_publish_token_is_one_per_job_and_epoch() -> None:
    token = publish_token("orders", Epoch(3))
    assert token.slice_id == publish_slice_id(3) == "publish.e3"
    assert CommitToken.from_properties(token.to_properties()) == token
