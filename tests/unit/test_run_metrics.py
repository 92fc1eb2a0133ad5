"""``seamline run --metrics-port``: the metrics a run exports, fed by its progress events."""

from __future__ import annotations

import io

from prometheus_client import CollectorRegistry

from coordinator.run.metrics import MetricsProgress, RunMetrics
from coordinator.run.progress import LineProgress


def test_progress_events_feed_rows_rate_retries_and_reach_the_terminal_sink() -> None:
    registry = CollectorRegistry()
    counts = {"failed": 1, "running": 2, "committed": 3}
    metrics = RunMetrics("j", lambda: counts, lambda: 4.5, registry)
    now = [10.0]
    out = io.StringIO()
    sink = MetricsProgress(LineProgress(out, every_slices=1), metrics, clock=lambda: now[0])
    sink.start(total=6, done=3)
    now[0] += 4.0
    sink.slice_done(rows=100)
    sink.retry()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"job": "j", **labels})

    assert value("seamline_run_rows_total") == 100 and value("seamline_run_retries_total") == 1
    assert value("seamline_run_rows_per_second") == 25.0
    assert value("seamline_run_slices", state="failed") == 1
    assert value("seamline_run_slices", state="running") == 2
    assert value("seamline_run_slices", state="pending") == 0
    assert value("seamline_run_lag_pause_seconds") == 4.5
    counts["failed"] = 2  # read again at every scrape
    assert value("seamline_run_slices", state="failed") == 2
    assert "backfill: 4/6 slices" in out.getvalue()  # forwarded to the terminal's sink
