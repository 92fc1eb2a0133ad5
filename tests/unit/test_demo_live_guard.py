"""The demo stops its backfill as soon as its live consumer dies (instead of letting the lag
gate hold every slice back until ``max_wait_s``): real child processes stand in for
``seamline live``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from coordinator.demo.live import LiveGuard, LiveProcess
from coordinator.run.runner import StopSignal


def _live(tmp_path: Path, code: str) -> LiveProcess:
    live = LiveProcess(tmp_path / "job.toml", tmp_path / "live.log")
    with live.log_file.open("ab") as out:
        live.proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out)
    return live


def test_a_dead_live_consumer_stops_the_backfill_with_its_exit_code_and_log(tmp_path: Path) -> None:
    live = _live(tmp_path, "import sys; print('error: catalog unreachable'); sys.exit(2)")
    stop = StopSignal()
    guard = LiveGuard(live, stop.request, every_s=0.05)
    guard.start()
    guard.join(20)
    assert not guard.is_alive()
    assert stop.stop.is_set() and not stop.abandon.is_set()
    error = guard.stop()
    assert error is not None
    assert f"pid={live.pid} exited with code=2" in str(error)
    assert "catalog unreachable" in (error.hint or "")


def test_a_running_live_consumer_is_left_alone(tmp_path: Path) -> None:
    live = _live(tmp_path, "import time; time.sleep(60)")
    stop = StopSignal()
    guard = LiveGuard(live, stop.request, every_s=0.05)
    guard.start()
    try:
        assert not stop.stop.wait(0.5)
        assert guard.stop() is None
        assert not guard.is_alive()
    finally:
        assert live.proc is not None
        live.proc.kill()
        live.proc.wait(10)
    assert not stop.stop.is_set()
