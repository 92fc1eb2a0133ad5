"""Helpers shared by the reconcile integration tests (no tests here)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from backfill.executor import execute_slice
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import CommitToken, Cut, Epoch, Slice
from coordinator.state.store import StateStore


def seamline(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``seamline`` CLI in a fresh process."""
    code = "from coordinator.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )


def reconcile_json(job_path: str, *extra: str) -> tuple[int, dict[str, Any]]:
    """``seamline reconcile JOB --output json``: exit code and the JSON document."""
    out = seamline("reconcile", job_path, "--output", "json", *extra)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, dict(json.loads(out.stdout))


def store_plan(job: JobSpec, cut: Cut, slices: Sequence[Slice]) -> StateStore:
    """Store ``cut`` (its epoch must be the job's first) and ``slices`` as the plan."""
    (job.base_dir / ".seamline").mkdir(exist_ok=True)
    store = StateStore(job.state_url())
    epoch = store.ensure_job(job.job_id)
    assert epoch == cut.epoch
    store.save_cut(cut)
    store.save_plan(job.job_id, epoch, list(slices), "plan-" + "-".join(s.slice_id for s in slices))
    return store


def run_slices(job: JobSpec, store: StateStore, slices: Sequence[Slice]) -> None:
    """Execute every slice with the real executor and record it committed."""
    epoch = store.current_epoch(job.job_id)
    for s in slices:
        store.mark_running(job.job_id, s.slice_id, epoch)
        token = CommitToken(job.job_id, s.slice_id, 1, Epoch(epoch), "backfill")
        result = execute_slice(job, s, token)
        store.mark_committed(job.job_id, s.slice_id, epoch, rows=result.rows, token=token)
