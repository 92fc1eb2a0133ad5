"""Fixtures shared by the integration tests that run ``seamline`` processes and kill them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def exec_dir(tmp_path: Path) -> Path:
    """Where tests/integration/slow_executor.py logs the slices it starts."""
    d = tmp_path / "exec"
    d.mkdir()
    return d


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts (each in its own session); whatever is left of them is
    killed with its process group at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
