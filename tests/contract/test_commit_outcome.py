"""Commit outcomes (DESIGN §3) on real tables: an error after the commit landed is resolved by
token (no second copy, no error), an error before it is "outcome unknown" (nothing visible).
Local SQL-catalog Iceberg and Lance, Iceberg on the REST catalog server and Lance on S3."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import backfill.sinks.common as common
from backfill.sinks import open_sink
from coordinator.core.errors import CommitConflictError, CommitOutcomeUnknownError, WriterError
from coordinator.core.values import Scope
from tests.contract.backfill_writers import Rows, content, make_job, servers_for, token

pytestmark = pytest.mark.integration

FORMATS = ("iceberg-overwrite", "lance-overwrite", "iceberg-overwrite@rest", "lance-overwrite@s3")


def _fail_after_commit(real: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise ConnectionError("connection lost after the commit was sent")

    return wrapped


def _fail_before_commit(*_args: Any, **_kwargs: Any) -> Any:
    raise ConnectionError("connection lost before the commit was sent")


@pytest.mark.parametrize("writer", FORMATS)
def test_error_after_commit_is_resolved_by_token(
    writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    job = make_job(writer, tmp_path, "127.0.0.1:1", "unused", **servers_for(writer, request))
    sink = open_sink(job)
    sink.ensure_table()
    rows = Rows(base=1000, partition=0, start=0, count=50)
    tok = token("k-p0-0-50", rows.range)
    monkeypatch.setattr(common, "retry_conflicts", _fail_after_commit(common.retry_conflicts))
    record = sink.write_slice(Scope("kafka", (rows.range,)), rows.table("backfill"), tok)
    assert record.token == tok
    assert [r["order_id"] for r in content(job)] == list(range(1000, 1050))
    assert sink.find_commit("contract", "k-p0-0-50") is not None


@pytest.mark.parametrize("writer", FORMATS)
def test_error_before_commit_is_outcome_unknown_and_nothing_is_visible(
    writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    job = make_job(writer, tmp_path, "127.0.0.1:1", "unused", **servers_for(writer, request))
    sink = open_sink(job)
    sink.ensure_table()
    rows = Rows(base=1000, partition=0, start=0, count=50)
    monkeypatch.setattr(common, "retry_conflicts", _fail_before_commit)
    with pytest.raises(CommitOutcomeUnknownError, match="token not found"):
        sink.write_slice(
            Scope("kafka", (rows.range,)), rows.table("backfill"), token("k-p0-0-50", rows.range)
        )
    assert content(job) == []
    assert sink.find_commit("contract", "k-p0-0-50") is None


def _conflict() -> None:
    raise RuntimeError("conflict")


def test_classification_refused_and_conflicts() -> None:
    tok = token("s", None)
    policy = common.RetryPolicy(attempts=3, base_s=0.0, max_s=0.0)

    def refuse() -> None:
        raise ValueError("schema mismatch")

    with pytest.raises(WriterError, match="write refused"):
        common.commit_with_token(
            "w", tok, refuse, is_conflict=lambda e: False, policy=policy, find_exact=lambda t: None
        )
    calls: list[int] = []

    def conflict() -> None:
        calls.append(1)
        _conflict()

    with pytest.raises(CommitConflictError, match="3 conflicts in a row"):
        common.commit_with_token(
            "w", tok, conflict, is_conflict=lambda e: True, policy=policy, find_exact=lambda t: None
        )
    assert len(calls) == 3
