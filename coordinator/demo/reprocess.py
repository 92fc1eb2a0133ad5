"""``seamline demo --reprocess``: an incident, detected and repaired under live traffic.

After the onboarding, one week of the topic's history is rewritten with a buggy transform
(``normalise_buggy``: amounts in cents) through the real reprocess path, as a bad release
would. Reconciling with the job's transform then names the broken slices and rows. Finally
``seamline reprocess`` logic re-derives the same week with the job's (correct) transform, and
the reconciliation passes again. The live consumer keeps writing throughout.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Cut
from coordinator.demo.data import DemoWindow

log = logging.getLogger(__name__)

BUGGY_TRANSFORM = "coordinator.demo.data:normalise_buggy"
WEEKS_BACK = 10  # the broken week: this many weeks before the end of the history


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def bug_week(window: DemoWindow) -> tuple[datetime, datetime]:
    """A Monday-to-Monday week inside the topic's part of the history."""
    day = window.end - timedelta(weeks=WEEKS_BACK)
    start = day - timedelta(days=day.weekday())
    return start, start + timedelta(weeks=1)


def run_reprocess_demo(
    job: JobSpec, cut: Cut, window: DemoWindow, say: Callable[[str], None]
) -> dict[str, Any]:
    """Break one week, show the reconciliation catching it, repair it; returns the facts."""
    from coordinator.service import reconcile_run, reprocess

    start, end = bug_week(window)
    week = f"[{start:%Y-%m-%d}, {end:%Y-%m-%d})"
    say(f"incident: week {week} rewritten by a buggy transform ({BUGGY_TRANSFORM})")
    with _quiet("reconcile.run"):  # the buggy run reconciles with the buggy transform: noise
        broken = reprocess(job, start, end, transform=BUGGY_TRANSFORM)
    report, error = reconcile_run(job, cut)
    mismatched = [s.slice_id for s in report.mismatched] if report is not None else []
    differing = sum(s.drilldown.total for s in report.mismatched if s.drilldown) if report else 0
    detected = report is not None and not report.reconciled
    say(f"incident: reconcile with the job's transform: reconciled="
        f"{report.reconciled if report else error}; {len(mismatched)} slices mismatch "
        f"({', '.join(mismatched)}), {differing:,} rows named by the drill-down")  # fmt: skip
    fixed = reprocess(job, start, end)
    repaired = fixed.exit_code == ExitCode.OK
    say(f"incident: seamline reprocess --from {start:%Y-%m-%d} --to {end:%Y-%m-%d}: "
        f"{fixed.rows:,} rows re-derived from the topic, reconciled={repaired}")  # fmt: skip
    return {
        "week": [start.isoformat(), end.isoformat()],
        "buggy_transform": BUGGY_TRANSFORM,
        "rows_rewritten_by_bug": broken.rows,
        "detected": detected,
        "mismatched_slices": mismatched,
        "differing_rows": differing,
        "repaired_rows": fixed.rows,
        "repaired": repaired,
        "ok": detected and repaired and broken.rows > 0,
    }
