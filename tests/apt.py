"""Debian packages a test needs (PostgreSQL, Chromium, docker-compose), installed on first use.

Test processes may run in parallel (``pytest -n 2``): apt and dpkg refuse a second concurrent
run, so every install here holds one host-wide advisory lock, and dpkg waits for its own lock
(another apt run on the host) instead of failing.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

LOCK = Path("/tmp/seamline-tests-apt.lock")
WAIT = ["-o", "DPkg::Lock::Timeout=600"]


def apt_install(*packages: str) -> subprocess.CompletedProcess[str]:
    """``apt-get update`` then ``apt-get install`` ``packages``; the result of the install (the
    caller decides whether a failure fails its test)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            subprocess.run(["apt-get", *WAIT, "update", "-qq"], capture_output=True, text=True,
                           check=False, env=env)  # fmt: skip
            return subprocess.run(
                ["apt-get", *WAIT, "install", "-y", "-qq", "--no-install-recommends", *packages],
                capture_output=True, text=True, check=False, env=env,
            )  # fmt: skip
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
