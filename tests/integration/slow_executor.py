"""The real slice executor, slowed down, for tests that kill processes mid-run (no tests here).

``execute`` appends ``<slice_id> <attempt> <pid>`` to ``$SEAMLINE_TEST_EXEC_DIR/started.log``,
sleeps ``$SEAMLINE_TEST_EXEC_SLEEP`` seconds (default 1), waits until the file
``$SEAMLINE_TEST_EXEC_GATE`` exists when that is set, then runs
:func:`backfill.executor.execute_slice`: real Kafka reads, real table commits. The log tells a
test which worker process is in the middle of which slice.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from backfill.executor import execute_slice
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import SliceResult
from coordinator.core.values import CommitToken, Slice


def execute(job: JobSpec, slice_: Slice, token: CommitToken) -> SliceResult:
    """Log the start, sleep, then execute the slice for real."""
    log = Path(os.environ["SEAMLINE_TEST_EXEC_DIR"]) / "started.log"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{slice_.slice_id} {token.attempt} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    time.sleep(float(os.environ.get("SEAMLINE_TEST_EXEC_SLEEP", "1.0")))
    gate = os.environ.get("SEAMLINE_TEST_EXEC_GATE")
    while gate and not Path(gate).exists():
        time.sleep(0.05)
    return execute_slice(job, slice_, token)
