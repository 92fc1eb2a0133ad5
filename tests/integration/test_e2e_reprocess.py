"""Incident reprocessing end to end, on Iceberg and Lance: history was loaded with a transform
that multiplied one week's amounts by 100; ``seamline reprocess`` re-derives that week (half
from the archive, half from the topic's retained range) with the fixed transform while live
traffic keeps flowing. Other weeks stay byte for byte (and, on Iceberg, in the same data
files), the week is now right, and it all reconciles with every count 0."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import JobSpec
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_onboarding import live_caught_up
from tests.integration.test_e2e_support import (
    BUG_FROM,
    BUG_TO,
    TRANSFORMS,
    ZERO,
    LiveProducer,
    counts,
    ends_of,
    job_path,
    job_toml,
    json_out,
    live_consumer,
    load_history,
    seamline,
    table_rows,
    take_cut,
    wait_until,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


#: The live consumer still compacts (every 50 live commits) but expires no snapshot this test
#: reads back: the file check walks every commit since the reprocess started.
KEEP_EVERY_SNAPSHOT = "keep_snapshots = 100000\n"


def in_week(rows: pa.Table) -> pa.Array:
    ts = rows["ts"]
    return pc.and_(
        pc.greater_equal(ts, pa.scalar(BUG_FROM, ts.type)), pc.less(ts, pa.scalar(BUG_TO, ts.type))
    )


def history_rows(job: JobSpec) -> tuple[pa.Table, pa.Table]:
    """(backfill rows outside the week, backfill rows inside), sorted by lineage."""
    rows = table_rows(job)
    rows = rows.filter(pc.equal(rows["_seamline_side"], "backfill"))
    week = in_week(rows)
    return rows.filter(pc.invert(week)), rows.filter(week)


def iceberg_files(job: JobSpec) -> tuple[set[str], int]:
    """(data files that cannot hold rows of the week, the current snapshot id)."""
    from backfill.sinks import open_catalog
    from backfill.sinks.scopes import iceberg_bucket
    from coordinator.core.values import TimeBucket

    table = open_catalog(job).load_table(str(job.table.identifier))
    week = iceberg_bucket("ts", TimeBucket(BUG_FROM, BUG_TO))
    every = {t.file.file_path for t in table.scan().plan_files()}
    maybe_week = {t.file.file_path for t in table.scan(row_filter=week).plan_files()}
    snapshot = table.current_snapshot()
    assert snapshot is not None
    return every - maybe_week, snapshot.snapshot_id


def files_removed_since(job: JobSpec, since: int) -> tuple[set[str], int]:
    """(data files removed by the commits after snapshot ``since`` other than compactions,
    how many such commits removed anything). The live consumer compacts small files of any
    partition every ``expire_snapshots_every`` live commits (a legitimate rewrite); every other
    commit after ``since`` is a live append or the reprocess's own. Needs every snapshot since
    ``since`` kept (``keep_snapshots``)."""
    from backfill.sinks import open_catalog
    from backfill.sinks.iceberg.compact import COMPACTION_PROPERTY

    table = open_catalog(job).load_table(str(job.table.identifier))

    def files(snapshot_id: int) -> set[str]:
        return {t.file.file_path for t in table.scan(snapshot_id=snapshot_id).plan_files()}

    removed: set[str] = set()
    commits = 0
    snap = table.current_snapshot()
    while snap is not None and snap.snapshot_id != since:
        parent = snap.parent_snapshot_id
        assert parent is not None, f"snapshot {since} is not an ancestor of the current one"
        summary = snap.summary
        rewrote = summary is not None and summary.operation.value != "append"
        if rewrote and summary is not None and summary[COMPACTION_PROPERTY] is None:
            gone = files(parent) - files(snap.snapshot_id)
            removed |= gone
            commits += bool(gone)
        snap = table.snapshot_by_id(parent)
    assert snap is not None, f"snapshot {since} was expired: keep more snapshots"
    return removed, commits


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_reprocess_one_week_under_live_traffic(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(tmp_path, kafka_bootstrap, topic)
    job = write_job(
        tmp_path, fmt, kafka_bootstrap, topic, slice_records=200, transform=f"{TRANSFORMS}:buggy",
        live_extra=KEEP_EVERY_SNAPSHOT,
    )
    take_cut(job)
    producer = LiveProducer(kafka_bootstrap, topic, first_id=2_000_000)
    producer.start()
    with live_consumer(job) as live:
        loaded = seamline("run", job_path(job), "--output", "json")
        assert loaded.returncode == ExitCode.OK, loaded.stderr[-3000:]
        outside, week = history_rows(job)
        expected = pa.concat_tables([history.archive, history.topic]).sort_by("order_id")
        want = expected.filter(in_week(expected))
        assert week.num_rows == want.num_rows > 0
        buggy = week.sort_by("order_id")["amount"].to_pylist()
        assert buggy == [a * 100.0 for a in want["amount"].to_pylist()]  # the incident
        files_before, since = iceberg_files(job) if fmt == "iceberg" else (set(), 0)

        args = ["reprocess", job_path(job), "--from", BUG_FROM.date().isoformat()]
        args += ["--to", BUG_TO.date().isoformat(), "--transform", f"{TRANSFORMS}:fixed"]
        fixed = seamline(*args, "--output", "json")
        assert fixed.returncode == ExitCode.OK, fixed.stderr[-3000:]
        doc = json_out(fixed)
        assert doc["reconciled"] is True and counts(doc["reconcile"]) == ZERO, doc
        kinds = {s.split("-")[2] for s in doc["slices"]}
        assert kinds == {"a", "k"}, doc["slices"]  # archive bucket and topic offsets

        outside_after, week_after = history_rows(job)
        assert outside_after.equals(outside), "rows of other weeks changed"
        got = week_after.sort_by("order_id")
        assert got["order_id"].to_pylist() == want["order_id"].to_pylist()
        assert got["amount"].to_pylist() == want["amount"].to_pylist()  # now correct
        if fmt == "iceberg":
            removed, commits = files_removed_since(job, since)
            assert commits > 0, "the reprocess removed no data file (the week was not replaced)"
            assert not removed & files_before, "data files of other weeks rewritten"

        again = json_out(seamline(*args, "--output", "json"))  # idempotent: nothing to do
        assert (again["committed"], again["skipped"]) == (0, len(doc["slices"]))
        assert again["run_id"] == doc["run_id"] and again["reconciled"] is True
        assert history_rows(job)[1].sort_by("order_id").equals(got)

        everything = {**history.delivered, **producer.finish()}
        wait_until(lambda: live_caught_up(job, ends_of(everything)), 120, "live to catch up")
        assert live.poll() is None, "the live consumer ran throughout"

    path = job.base_dir / "job.toml"  # the job file now names the fixed transform
    path.write_text(
        job_toml(tmp_path, fmt, kafka_bootstrap, topic, slice_records=200,
                 transform=f"{TRANSFORMS}:fixed", live_extra=KEEP_EVERY_SNAPSHOT),
        encoding="utf-8",
    )  # fmt: skip
    final = seamline("reconcile", job_path(job), "--output", "json")
    assert final.returncode == ExitCode.OK, final.stdout[-3000:]
    assert counts(json_out(final)["totals"]) == ZERO
    rows = table_rows(job)
    assert rows.num_rows == history.archive.num_rows + len(everything)
