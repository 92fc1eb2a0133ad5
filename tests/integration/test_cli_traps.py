"""No traps: an empty archive glob, a job file that drifted from its stored plan, and
``history.kafka = false`` on a topic that holds records (real broker, real subprocesses)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import job_toml, out_json, produce, seamline, write_job

pytestmark = pytest.mark.integration

ARCHIVE = '\n[history]\nkafka = {kafka}\n[[history.archive]]\nglob = "archive/*.parquet"\n'


def _archive_file(folder: Path, name: str, day: int) -> None:
    folder.mkdir(exist_ok=True)
    ts = 1_704_067_200_000 + day * 86_400_000
    table = pa.table({"order_id": pa.array([day], pa.int64()),
                      "ts": pa.array([ts], pa.timestamp("ms", tz="UTC")),
                      "amount": pa.array([1.0])})  # fmt: skip
    pq.write_table(table, folder / f"{name}.parquet")


def test_an_archive_glob_matching_nothing_is_a_config_error_naming_it(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(1)
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, extra=ARCHIVE.format(kafka="true")))
    for command in (("plan", str(job)), ("plan", str(job), "--dry-run"), ("run", str(job))):
        res = seamline(*command)
        assert res.returncode == ExitCode.CONFIG, (command, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert "history.archive[0].glob='archive/*.parquet'" in lines[0]
        assert "expected at least one file, found none" in lines[0]
    # nothing planned or stored: once the glob matches, the plan has the archive slice
    _archive_file(tmp_path / "archive", "a", 0)
    doc = out_json(seamline("plan", str(job), "--no-count", "--output", "json"))
    assert [s["slice_id"] for s in doc["slices"] if s["kind"] == "archive"] == ["a-day-20240101"]


def test_a_job_file_that_drifted_from_the_stored_plan_names_the_next_step(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(1)
    produce(kafka_bootstrap, topic, {0: 4})
    _archive_file(tmp_path / "archive", "a", 0)
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, extra=ARCHIVE.format(kafka="true")))
    first = seamline("plan", str(job), "--no-count", "--output", "json")
    assert "warning" not in first.stderr and out_json(first)["total"]["slices"] == 2
    _archive_file(tmp_path / "archive", "b", 3)  # a new archive file: the plan would change
    for command in ("plan", "status"):
        res = seamline(command, str(job), *(["--no-count"] if command == "plan" else []))
        assert res.returncode == 0, res.stderr
        assert "the job file no longer matches the stored plan" in res.stderr
        assert f"seamline cut {job} --new-cut" in res.stderr
    assert out_json(seamline("cut", str(job), "--new-cut", "--output", "json"))["epoch"] == 2
    after = seamline("plan", str(job), "--no-count", "--output", "json")
    assert "warning" not in after.stderr and out_json(after)["total"]["slices"] == 3


def test_history_kafka_false_on_a_topic_with_records_is_refused(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(2)
    produce(kafka_bootstrap, topic, {0: 0, 1: 3})
    _archive_file(tmp_path / "archive", "a", 0)
    extra = ARCHIVE.format(kafka="false")
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, extra=extra))
    for command in ("cut", "run"):
        res = seamline(command, str(job))
        assert res.returncode == ExitCode.CONFIG, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert "history.kafka=false expects a topic with no retained records" in lines[0]
        assert "partition=1 offsets=[0,3)" in lines[0] and "partition=0" not in lines[0]
        assert not (tmp_path / ".seamline").exists()  # nothing written
    # the same job on an empty topic is an archive-only job: it cuts
    empty = kafka_topic(1)
    job = write_job(tmp_path, job_toml(empty, kafka_bootstrap, extra=extra))
    assert out_json(seamline("cut", str(job), "--output", "json"))["topic"] == empty


def test_a_hint_names_the_job_file_it_was_given_so_it_pastes(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    (tmp_path / "my jobs").mkdir()  # a path that needs quoting
    job = write_job(tmp_path / "my jobs", job_toml(kafka_topic(1), kafka_bootstrap))
    assert seamline("cut", str(job)).returncode == 0
    res = seamline("run", str(job), "--only", "no-such-slice*")
    assert res.returncode != 0, res.stdout
    line = res.stderr.strip().splitlines()[-1]
    assert "JOB" not in line and f"`seamline plan '{job}'`" in line, line
