"""Slice executors for worker-pool tests, importable in spawned workers (no tests here)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from coordinator.core.errors import ConfigError
from coordinator.core.ports import SliceResult
from coordinator.core.values import CommitToken, Slice


@dataclass(frozen=True)
class StubJob:
    """The two things a worker needs of a job: its id and its state store."""

    job_id: str
    url: str

    def state_url(self) -> str:
        return self.url


def pid(job: StubJob, slice_: Slice, token: CommitToken) -> SliceResult:
    """Returns the worker's pid as ``rows``."""
    return SliceResult(rows=os.getpid(), commit=None)


def die_first(job: StubJob, slice_: Slice, token: CommitToken) -> SliceResult:
    """SIGKILLs its own worker on attempt 1 (as the OOM killer would); later attempts pass."""
    if token.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return SliceResult(rows=os.getpid(), commit=None)


def sleep(job: StubJob, slice_: Slice, token: CommitToken) -> SliceResult:
    """Sleeps a minute (a worker busy with a slice)."""
    time.sleep(60)
    return SliceResult(rows=0, commit=None)


def terminal(job: StubJob, slice_: Slice, token: CommitToken) -> SliceResult:
    """Fails with a configuration error (never retried)."""
    raise ConfigError(f"slice_id={slice_.slice_id}: terminal test failure")


def env_number(job: StubJob, slice_: Slice, token: CommitToken) -> SliceResult:
    """Returns ``$SEAMLINE_TEST_NUMBER`` (the worker's environment) as ``rows``."""
    return SliceResult(rows=int(os.environ.get("SEAMLINE_TEST_NUMBER", "-1")), commit=None)


def preloaded(job: StubJob, slice_: Slice, token: CommitToken) -> SliceResult:
    """``rows=1`` if the worker found the heavy modules imported before its first slice."""
    import sys

    warm = all(m in sys.modules for m in ("pyarrow", "pyiceberg.table", "lance"))
    return SliceResult(rows=int(warm), commit=None)
