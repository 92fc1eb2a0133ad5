"""Report v2 on a real run: ``seamline run`` (archive Parquet + a real Kafka topic into a real
Iceberg table), then ``seamline reconcile --html``; headless Chromium loads the page and the
test finds the slice timeline, the throughput/lag chart and the coverage grids by element id,
with one timeline bar per slice the state store timed and one grid cell per partition and per
archive bucket. The screenshot is kept in ``/tmp/seamline-report-v2`` for a person to look at.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from coordinator.core.errors import ExitCode
from coordinator.state.store import StateStore
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import job_path, load_history, seamline, write_job
from tests.integration.test_reconcile_mutations import _chromium

pytestmark = pytest.mark.integration

KEEP = Path("/tmp/seamline-report-v2")


def _ids(dom: str) -> set[str]:
    return set(re.findall(r'<svg id="([a-z-]+)"', dom))


def _section(dom: str, elem: str) -> str:
    start = dom.index(f'<svg id="{elem}"')
    return dom[start : dom.index("</svg>", start)]


def test_report_of_a_real_run_shows_timeline_throughput_and_coverage_in_chromium(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    load_history(tmp_path, kafka_bootstrap, topic, archive_n=300, topic_n=600)
    job = write_job(tmp_path, "iceberg", kafka_bootstrap, topic, slice_records=100)
    res = seamline("run", job_path(job))
    assert res.returncode == ExitCode.OK, res.stderr[-3000:]
    html = tmp_path / "report.html"
    rec = seamline("reconcile", job_path(job), "--html", str(html))
    assert rec.returncode == ExitCode.OK, rec.stderr[-3000:]
    with StateStore(job.state_url(), create=False) as store:
        records = store.list_slices(job.job_id)
    archive = sum(r.slice.scope.source == "archive" for r in records)
    assert archive >= 2 and len(records) > archive  # both kinds ran

    png, dom = _chromium(html, tmp_path, "report-v2")
    assert {"timeline", "throughput", "coverage-grid", "archive-grid"} <= _ids(dom)
    assert 'data-reconciled="true"' in dom
    timeline = _section(dom, "timeline")
    assert timeline.count('<rect class="slice') == len(records)
    assert _section(dom, "throughput").count('<polyline class="rows-per-s"') == 1
    assert _section(dom, "coverage-grid").count('class="cell ok"') == 3
    assert _section(dom, "archive-grid").count('class="cell ok"') == archive
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    KEEP.mkdir(exist_ok=True)
    for f in (png, html):
        shutil.copyfile(f, KEEP / f.name)
