"""Every crash point fires (the process dies by SIGKILL exactly there, per the marker it wrote
just before the kill) and recovery ends with the independent oracle at 0 anomalies.

One trial per point, table formats and modes alternating, so every point, both formats and
both modes are exercised on every change; ``bench/faults.py --trials N`` runs the long soak.
"""

from __future__ import annotations

import pytest

from coordinator.core.faults import POINTS
from coordinator.testing.pytest_plugin import KillAt
from coordinator.testing.soak import STAGED_POINTS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# ``worker.commit_retry``: arming it also refuses one slice commit attempt as a conflict
# (coordinator.core.faults.force_conflict), so the retry path is reached on every trial.
UNFORCED: set[str] = set()
# ``run.before_publish`` runs write-audit-publish (publish = "atomic") and
# ``run.after_batch_commit`` the coordinator's batch commits: overwrite mode only.
CASES = [(point, ("lance", "iceberg")[i % 2],
          "overwrite" if point in STAGED_POINTS else ("overwrite", "merge")[(i // 2) % 2])
         for i, point in enumerate(sorted(set(POINTS) - UNFORCED))]


@pytest.mark.parametrize(("point", "fmt", "mode"), CASES)
def test_crash_point_fires_and_recovery_is_exact(
    kill_at: KillAt, point: str, fmt: str, mode: str
) -> None:
    result = kill_at(point, fmt, mode, seed=len(point))
    assert result.died_at == point, result.notes  # died there, not elsewhere
    assert result.killed_by_sigkill or point.startswith("worker."), result.notes
    assert result.report is not None
    assert result.report.anomalies == 0, result.report.to_json()
    assert result.report.table_rows > 0 and result.report.poison >= 0
