"""``[live] max_commit_share`` on a real broker and a real Iceberg table: after a slow commit
the next one waits ``took / share`` (its batch grows meanwhile), and every record still lands
exactly once. Read back from the table's own snapshots, not from our bookkeeping."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from backfill.sinks.iceberg.live import snapshot_record
from coordinator.service import open_catalog
from coordinator.testing.pytest_plugin import write_job_file
from tests.integration.test_live_support import (
    BackgroundProducer,
    ends,
    start_live,
    stop_live,
    store_cut,
    table_offsets,
    table_rows,
    wait_until,
)

pytestmark = pytest.mark.integration

SHARE = 0.25  # a commit of >= 1 s (the slow transform): the next one >= 4 s after it started


def test_slow_live_commits_are_paced_by_the_commit_share_and_nothing_is_lost(
    kafka_bootstrap: str, kafka_topic: object, tmp_path: Path
) -> None:
    topic = kafka_topic(2)  # type: ignore[operator]
    job = write_job_file(
        tmp_path, kafka_bootstrap, topic, table_format="iceberg", job_id="pacejob",
        schema={"required": ["id"], "fields": {"id": "int64", "ts": "timestamp_ms", "name": "string"}},
        table={"identifier": "live.paced"},
        transform={"function": "tests.integration.slow_transform:slow"},
        live={"batch_records": 100_000, "batch_seconds": 0.2, "min_commit_seconds": 0.0,
              "max_commit_share": SHARE, "expire_snapshots_every": 0},
    ).spec  # fmt: skip
    store_cut(job, {0: 0, 1: 0})
    proc = start_live(job)
    try:
        producer = BackgroundProducer(
            kafka_bootstrap, topic, 1_200, partitions=2, pace_every=50, pace_s=0.5
        )  # ~12 s of records, a few every poll
        producer.start()
        producer.join(120)
        assert producer.error is None, producer.error
        delivered = producer.result
        want = ends(delivered)
        wait_until(lambda: table_offsets(job) == want, 120, "the table to hold every record")
    finally:
        assert stop_live(proc) == 0
    rows = table_rows(job)
    assert not [k for k, n in Counter(rows).items() if n > 1], "a record was written twice"
    assert set(rows) == set(delivered)
    table = open_catalog(job).load_table("live.paced")
    records = [snapshot_record(s) for s in table.snapshots()]
    live = sorted(r.committed_at.timestamp() for r in records if r and r.token.side == "live")
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(live)]
    assert len(live) >= 2, f"expected several live commits over ~12 s, found {len(live)}"
    # without pacing a commit follows the last one's end within a poll (~1.2 s apart here)
    assert min(gaps) >= 3.5, f"live commits {gaps} s apart: expected >= 1 s / {SHARE} each"
