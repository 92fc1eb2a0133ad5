"""Report v2: the templated HTML page and its SVG charts, on built reports (no services).

The real-services check (a real run, the page opened in headless Chromium) is in
``tests/integration/test_report_chromium.py``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from coordinator.core.values import Offset, OffsetRange, PartitionId
from reconcile.charts import Pause, RunFacts, SliceRun, fmt, lanes, rate_series
from reconcile.checksum import Checksum
from reconcile.coverage import PartitionCoverage
from reconcile.drilldown import DiffRow, DrillDown
from reconcile.model import ReconcileReport, SliceReport
from reconcile.report import render_html

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def _part(p: int, **counts: Any) -> PartitionCoverage:
    return PartitionCoverage(p, 0, 1_000, 1_200, 1_000, 1_200, **counts)


def _slice(i: int, kind: str = "history", bad: bool = False) -> SliceReport:
    src = Checksum(12_345, 1, 2)
    tab = Checksum(12_344, 3, 4) if bad else src
    scope = f"2024{i:04d}" if kind == "archive" else f"p0[{i * 10},{i * 10 + 10})"
    ranges = () if kind == "archive" else (OffsetRange(PartitionId(0), Offset(0), Offset(10)),)
    drill = None
    if bad:
        drill = DrillDown(missing=1, rows=(DiffRow("missing", {"order_id": 7}, {"x": 1}, None),))
    return SliceReport(f"s-{kind}-{i}", kind, scope, src, tab, drilldown=drill, ranges=ranges)  # type: ignore[arg-type]


def _report(partitions: int, slices: list[SliceReport]) -> ReconcileReport:
    parts = [_part(p) for p in range(partitions)]
    parts[3] = _part(3, lost=2, samples={"lost": (5, 6)})
    parts[4] = _part(4, quarantined=1)
    return ReconcileReport("job<&>", "orders", T0, 0.0, tuple(slices), tuple(parts))


def _facts() -> RunFacts:
    runs = tuple(
        SliceRun(f"s-{i}", "archive" if i % 2 else "history", T0 + timedelta(seconds=i),
                 T0 + timedelta(seconds=i + 2), attempts=3 if i == 5 else 1, rows=10_000)
        for i in range(10)
    )
    return RunFacts(
        slices=runs,
        pauses=(Pause(T0 + timedelta(seconds=4), 1.5),),
        lag=((T0, 10), (T0 + timedelta(seconds=6), 4_000), (T0 + timedelta(seconds=11), 0)),
        cut_taken_at=T0 - timedelta(seconds=3),
    )


def test_page_has_the_three_charts_mismatches_first_and_a_grid_for_1000_partitions() -> None:
    slices = [_slice(i) for i in range(5)] + [_slice(i, "archive") for i in range(7)]
    slices.insert(4, _slice(99, bad=True))
    html = render_html(_report(1_000, slices), _facts(), now=T0 + timedelta(minutes=1))
    for elem in ("timeline", "throughput", "coverage-grid", "archive-grid", "verdict"):
        assert f'id="{elem}"' in html
    grid = re.search(r'<svg id="coverage-grid" width="\d+" height="(\d+)"', html)
    assert grid is not None and int(grid.group(1)) < 500  # compact: not 1,000 bars of 130 px
    cells = re.findall(r'<rect class="cell (ok|info|bad-mark)"', html[html.index("coverage-grid"):])
    assert cells.count("bad-mark") == 1 and cells.count("info") == 1 and len(cells) >= 1_000
    assert html.count('class="cell ok"') >= 998 + 7  # partitions and archive buckets
    assert html.index('id="mismatches"') < html.index('id="timeline"')
    assert html.index(">s-history-99<") < html.index(">s-history-0<")  # slice table too
    assert "12,345" in html and "12,344" in html  # thousands separators
    assert "job&lt;&amp;&gt;" in html and "job<&>" not in html  # escaped
    assert 'class="bad-mark"' in html  # the failing partition's offset line
    assert "2026-01-05T11:59:57+00:00" in html and "2026-01-05T12:01:00+00:00" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_timeline_marks_retries_and_pauses_and_the_lag_line_is_drawn() -> None:
    html = render_html(_report(8, [_slice(0)]), _facts(), now=T0)
    assert html.count('class="slice retried"') == 1 and "&#215;3" in html
    assert html.count('class="pause"') == 2  # once in the timeline, once in the chart
    lag = re.search(r'<polyline class="live-lag" points="([^"]+)"', html)
    assert lag is not None and len(lag.group(1).split()) == 3
    assert '<polyline class="rows-per-s"' in html


def test_without_run_facts_the_charts_say_nothing_was_recorded() -> None:
    html = render_html(_report(8, [_slice(0)]), now=T0)
    assert 'id="timeline"' in html and "no slice timings recorded" in html
    assert "no archive buckets" in html and "(not recorded)" in html


def test_lanes_pack_overlapping_slices_onto_separate_workers() -> None:
    def run(a: int, b: int) -> SliceRun:
        return SliceRun(f"s{a}", "history", T0 + timedelta(seconds=a), T0 + timedelta(seconds=b))

    assert lanes([run(0, 4), run(1, 3), run(3, 5), run(4, 6)]) == [0, 1, 1, 0]


def test_rate_series_conserves_rows() -> None:
    runs = [SliceRun("a", "history", T0, T0 + timedelta(seconds=3), rows=3_000),
            SliceRun("b", "archive", T0 + timedelta(seconds=1), T0 + timedelta(seconds=2),
                     rows=500)]  # fmt: skip
    rates = rate_series(runs, T0, 4.0, 8)
    assert sum(r * 0.5 for r in rates) == pytest.approx(3_500)
    assert rates[0] == pytest.approx(1_000) and rates[2] == pytest.approx(1_500)


def test_slice_run_rejects_finish_before_start() -> None:
    with pytest.raises(ValueError, match="slice_id=x: expected finished_at >= started_at"):
        SliceRun("x", "history", T0, T0 - timedelta(seconds=1))


def test_fmt_uses_thousands_separators() -> None:
    assert fmt(1_234_567) == "1,234,567" and fmt(12.25) == "12.2" and fmt(3_456.7) == "3,457"
