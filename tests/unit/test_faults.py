"""Crash points: parsing, zero effect when unset, and a real SIGKILL with a marker when armed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.core import faults
from coordinator.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

CHILD = """
from coordinator.core.faults import crash_point
for i in range(5):
    print(i, flush=True)
    crash_point("worker.after_commit")
    crash_point("live.mid_batch")
print("done", flush=True)
"""


def run_child(tmp_path: Path, crash_at: str | None) -> tuple[subprocess.CompletedProcess[str], Path]:
    marker = tmp_path / "marker"
    env = {k: v for k, v in os.environ.items() if k != faults.CRASH_ENV}
    env.update({"PYTHONPATH": str(REPO), faults.MARKER_ENV: str(marker)})
    if crash_at is not None:
        env[faults.CRASH_ENV] = crash_at
    res = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, timeout=60)
    return res, marker


def test_parse_point_and_nth() -> None:
    assert faults.parse("worker.after_commit") == ("worker.after_commit", 1)
    assert faults.parse("maintenance:7") == ("maintenance", 7)


@pytest.mark.parametrize("bad", ["worker.aftercommit", "maintenance:0", "maintenance:x", ""])
def test_bad_value_is_a_config_error_naming_what_was_found(bad: str) -> None:
    with pytest.raises(ConfigError, match="expected"):
        faults.parse(bad)


def test_unset_never_kills(tmp_path: Path) -> None:
    res, marker = run_child(tmp_path, None)
    assert res.returncode == 0 and res.stdout.split() == ["0", "1", "2", "3", "4", "done"]
    assert not marker.exists()


def test_armed_point_kills_on_its_nth_reach_with_a_marker(tmp_path: Path) -> None:
    res, marker = run_child(tmp_path, "live.mid_batch:3")
    assert res.returncode == -signal.SIGKILL
    assert res.stdout.split() == ["0", "1", "2"]  # killed in the third round, not before
    name, pid = marker.read_text().split()
    assert name == "live.mid_batch" and int(pid) > 0


def test_bad_env_value_fails_at_import_with_the_point_named(tmp_path: Path) -> None:
    res, marker = run_child(tmp_path, "nowhere")
    assert res.returncode == 1 and "point='nowhere'" in res.stderr
    assert not marker.exists()


def test_arm_and_disarm_in_process() -> None:
    faults.arm("reconcile.mid_scan:2")
    try:
        faults.crash_point("reconcile.mid_scan")  # first reach: not yet
        faults.crash_point("maintenance")  # another point: never
    finally:
        faults.arm(None)
    faults.crash_point("reconcile.mid_scan")  # disarmed: nothing happens


def test_every_point_has_a_call_site_in_the_product() -> None:
    sources = "".join(
        p.read_text()
        for pkg in ("coordinator", "backfill", "stream", "reconcile")
        for p in (REPO / pkg).rglob("*.py")
    )
    for point in faults.POINTS:
        assert f'crash_point("{point}")' in sources, point


def test_every_call_site_names_a_known_point() -> None:
    # A misspelt name ("before_commit") is a point that can never fire: no trial covers it.
    names = {
        (p.relative_to(REPO).as_posix(), m)
        for pkg in ("coordinator", "backfill", "stream", "reconcile")
        for p in (REPO / pkg).rglob("*.py")
        for m in re.findall(r'crash_point\("([^"]+)"\)', p.read_text())
    }
    assert names
    assert {(f, n) for f, n in names if n not in faults.POINTS} == set()


def test_marker_makes_the_point_fire_once_across_processes(tmp_path: Path) -> None:
    first, marker = run_child(tmp_path, "worker.after_commit")
    assert first.returncode == -signal.SIGKILL and first.stdout.split() == ["0"]
    again, _ = run_child(tmp_path, "worker.after_commit")  # same marker: a restarted process
    assert again.returncode == 0 and again.stdout.split()[-1] == "done"
    assert marker.read_text().split()[0] == "worker.after_commit"


def test_armed_commit_retry_refuses_one_slice_commit_attempt_then_commits() -> None:
    from backfill.sinks.common import commit_with_token
    from coordinator.core.retry import RetryPolicy
    from coordinator.core.values import CommitToken, Epoch

    calls: list[int] = []

    def action() -> str:
        calls.append(1)
        return "landed"

    faults.arm("worker.commit_retry:2")  # reached once on the retry: not yet the 2nd reach
    try:
        out = commit_with_token(
            "slice s1", CommitToken("job", "s1", 1, Epoch(1), "backfill"), action,
            is_conflict=lambda exc: False, policy=RetryPolicy(attempts=3, base_s=0.0, max_s=0.0),
            find_exact=lambda token: None,
        )  # fmt: skip
        assert out == "landed" and calls == [1]  # refused once before the action, then made
        assert faults._reached == 1  # the retry path reached the point
        faults.force_conflict("again")  # once per process: no second refusal
    finally:
        faults.arm(None)
    faults.force_conflict("disarmed")  # nothing armed: never refuses
