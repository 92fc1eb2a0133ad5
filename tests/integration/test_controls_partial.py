"""Partial runs (``seamline run --only SLICE-GLOB`` / ``--limit N``) on real Kafka and real
Iceberg and Lance tables: exactly the matching slices are written (read back from the table),
the stored plan is unchanged, ``status`` names what remains, the run exits 5 (partial) until a
full run finishes and reconciles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import (
    ZERO,
    counts,
    job_path,
    json_out,
    load_history,
    seamline,
    table_rows,
    write_job,
)

pytestmark = pytest.mark.integration


def _status(path: str) -> dict[str, Any]:
    """Every slice in plan order and every remaining id (``--all``; the default is bounded)."""
    return json_out(seamline("status", path, "--all", "--output", "json"))


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_only_runs_exactly_the_matching_slices_then_a_full_run_finishes(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(tmp_path, kafka_bootstrap, topic, archive_n=90, topic_n=120)
    job = write_job(tmp_path, fmt, kafka_bootstrap, topic, slice_records=20)
    path = job_path(job)

    first = seamline("run", path, "--only", "k-p1-*", "--output", "json")
    assert first.returncode == ExitCode.PARTIAL, first.stderr
    doc = json_out(first)
    p1 = sorted(o for (p, o) in history.delivered if p == 1)
    plan_ids = [s["slice_id"] for s in _status(path)["slices"]]
    p1_ids = [s for s in plan_ids if s.startswith("k-p1-")]
    assert doc["committed"] == len(p1_ids) and doc["reconciled"] is False
    assert sorted(doc["not_selected"]) == sorted(set(plan_ids) - set(p1_ids))
    rows = table_rows(job)
    assert set(rows["_kafka_partition"].to_pylist()) == {1}  # nothing of another slice
    assert rows["_kafka_offset"].to_pylist() == p1
    assert rows["order_id"].to_pylist() == [history.delivered[(1, o)] for o in p1]

    status = _status(path)
    assert sorted(status["remaining"]) == sorted(doc["not_selected"])
    assert [s["slice_id"] for s in status["slices"]] == plan_ids

    second = seamline("run", path, "--limit", "2", "--output", "json")
    assert second.returncode == ExitCode.PARTIAL, second.stderr
    assert json_out(second)["committed"] == len(p1_ids) + 2
    assert len(_status(path)["remaining"]) == len(plan_ids) - len(p1_ids) - 2

    final = seamline("run", path, "--output", "json")
    assert final.returncode == ExitCode.OK, final.stdout[-2000:] + final.stderr[-2000:]
    out = json_out(final)
    assert out["reconciled"] is True and counts(out["reconcile"]) == ZERO
    assert _status(path)["remaining"] == []
    rows = table_rows(job)
    kafka = rows.filter(pc.equal(rows["_seamline_source"], "kafka"))
    assert kafka.num_rows == len(history.delivered)
    assert rows.num_rows == history.archive.num_rows + len(history.delivered)


def test_an_only_glob_matching_nothing_is_refused_before_any_slice(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    load_history(tmp_path, kafka_bootstrap, topic, archive_n=30, topic_n=30)
    job = write_job(tmp_path, "lance", kafka_bootstrap, topic, slice_records=20)
    res = seamline("run", job_path(job), "--only", "k-p7-*")
    assert res.returncode == ExitCode.CONFIG, res.stderr
    assert "--only 'k-p7-*'" in res.stderr and "found no match" in res.stderr
    assert not (tmp_path / "orders.lance").exists()
    assert _status(job_path(job))["counts"] == {"pending": len(_status(job_path(job))["slices"])}
