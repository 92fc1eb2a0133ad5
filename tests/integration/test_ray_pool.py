"""Slices on Ray (``[backfill] executor = "ray"``): a Ray worker killed mid-slice is a retried
slice and the run ends exactly once.

``seamline run`` as a subprocess on a local Ray (2 CPUs), real broker, real Lance table, the
real executor slowed down (tests/integration/slow_executor.py) so that the Ray worker running
a slice can be killed in the middle of it. The outcome is read from the table itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_cli_jobs import job_toml, produce, write_job
from tests.integration.test_worker_lifecycle import (
    PER_PARTITION,
    every_record_once,
    start_run,
    started,
    table_lineage,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = 'executor = "ray"\n'


def ray_task_of(pid: int) -> str:
    """The process title Ray gives a worker running a task (``ray::<task name>``)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()


def test_a_killed_ray_worker_is_a_retried_slice_and_the_run_ends_exactly_once(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    exec_dir: Path,
    procs: list[subprocess.Popen[str]],
) -> None:
    topic = kafka_topic(3)
    produce(kafka_bootstrap, topic, PER_PARTITION)
    job = write_job(tmp_path, job_toml(topic, kafka_bootstrap, slice_records=5, extra=RAY))
    run = start_run(job, exec_dir)
    procs.append(run)
    wait_until(lambda: len(started(exec_dir)) >= 3, 180, "a third slice to start")
    victim_slice, _, victim = started(exec_dir)[-1]  # the slice started last: mid-sleep
    assert ray_task_of(victim) == f"ray::{victim_slice}"  # a Ray worker, named by slice id
    assert victim not in {run.pid, os.getpid()}
    os.kill(victim, signal.SIGKILL)  # as the OOM killer would, mid-slice
    out, err = run.communicate(timeout=300)
    assert run.returncode == ExitCode.OK, err[-3000:]
    report = json.loads(out)
    assert (report["committed"], report["failed"], report["reconciled"]) == (12, [], True)
    assert report["retries"] >= 1 and report["worker_deaths"] >= 1
    attempts = Counter(sid for sid, *_ in started(exec_dir))
    assert attempts[victim_slice] >= 2  # the killed slice ran again, on another Ray worker
    assert len({pid for *_, pid in started(exec_dir)} - {victim}) >= 1
    assert table_lineage(tmp_path) == every_record_once()
