"""A test slice executor for the runner's tests (no tests in here).

It records every execution and "commits" each slice at most once, idempotent by slice id like
the real executor: the commit is an ``O_EXCL`` marker file, so a slice that was in flight when
its coordinator was killed may start twice but commits once. Settings come from the
environment (inherited by the worker processes):

* ``SEAMLINE_TEST_EXEC_DIR``: where ``executions.log``, ``commits.log`` and markers go;
* ``SEAMLINE_TEST_EXEC_SLEEP``: seconds each execution takes (default 0.2);
* ``SEAMLINE_TEST_EXEC_FAIL``: ``slice_id:attempts,...``, fail the first N attempts;
* ``SEAMLINE_TEST_EXEC_FATAL``: slice ids that fail with a terminal ConfigError;
* ``SEAMLINE_TEST_EXEC_GATE``: a path; each execution waits until that file exists.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coordinator.core.errors import ConfigError
from coordinator.core.ports import CommitRecord, SliceResult
from coordinator.core.values import CommitToken, Slice, SnapshotId


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _failures(name: str) -> dict[str, int]:
    spec = os.environ.get(name, "")
    return {k: int(v) for k, v in (item.split("=") for item in spec.split(",") if item)}


def execute(job: Any, slice_: Slice, token: CommitToken) -> SliceResult:
    """Run one slice: record it, sleep, fail on request, commit once."""
    root = Path(os.environ["SEAMLINE_TEST_EXEC_DIR"])
    sid = slice_.slice_id
    _append(root / "executions.log", f"{sid} {token.attempt} {token.epoch} {os.getpid()}")
    time.sleep(float(os.environ.get("SEAMLINE_TEST_EXEC_SLEEP", "0.2")))
    gate = os.environ.get("SEAMLINE_TEST_EXEC_GATE")
    while gate and not Path(gate).exists():
        time.sleep(0.05)
    if sid in os.environ.get("SEAMLINE_TEST_EXEC_FATAL", "").split(","):
        raise ConfigError(f"slice={sid}: terminal test failure")
    if token.attempt <= _failures("SEAMLINE_TEST_EXEC_FAIL").get(sid, 0):
        raise RuntimeError(f"slice={sid} attempt={token.attempt}: transient test failure")
    markers = root / "committed"
    markers.mkdir(exist_ok=True)
    try:
        fd = os.open(markers / sid, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return SliceResult(rows=slice_.est_rows, commit=None, already_committed=True)
    os.write(fd, json.dumps(token.to_properties()).encode())
    os.close(fd)
    _append(root / "commits.log", f"{sid} {token.attempt} {token.epoch}")
    snapshot = SnapshotId(int(time.time_ns() % 10**12))
    return SliceResult(
        rows=slice_.est_rows,
        commit=CommitRecord(token, snapshot, datetime.now(UTC), rows=slice_.est_rows),
    )
