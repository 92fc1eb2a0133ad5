"""Inline SVG charts of the HTML report, drawn by our own code (no scripts, no network).

* :func:`timeline_svg`: a Gantt of slices by worker lane; retried slices are outlined and
  marked with their attempt count.
* :func:`throughput_svg`: backfill rows/s over time (each slice's rows spread over its run
  time), the live lag when it was sampled, and the lag-pause bands.
* :func:`coverage_grid_svg`: one small cell per Kafka partition (a heat-map grid that stays
  compact at 1,000 partitions) and :func:`bucket_grid_svg`, one cell per archive bucket.

The run facts come from the state store (``coordinator.service.report_facts``); the worker
of a slice is not recorded, so lanes are assigned greedily from start/finish times (a slice
takes the first lane free when it started), which equals the worker count when the pool is
saturated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from typing import Final

from reconcile.coverage import FAILING, INFO, PartitionCoverage
from reconcile.model import SliceReport

log = logging.getLogger(__name__)

WIDTH: Final = 1040
_LEFT: Final = 70
_RIGHT: Final = 60
_LANE_H: Final = 18
_CELL: Final = 16
_GAP: Final = 2
_KIND_FILL: Final = {"archive": "#8250df", "history": "#0969da"}
_OK: Final = "#2da44e"
_BAD: Final = "#cf222e"
_INFO_FILL: Final = "#d4a72c"


def fmt(n: float) -> str:
    """Thousands separators (``12,345``; floats keep one decimal below 100)."""
    if isinstance(n, float) and abs(n) < 100 and n != int(n):
        return f"{n:,.1f}"
    return f"{round(n):,}"


@dataclass(frozen=True)
class SliceRun:
    """When and how one slice ran (from the state store)."""

    slice_id: str
    kind: str
    started_at: datetime
    finished_at: datetime
    attempts: int = 1
    rows: int = 0

    def __post_init__(self) -> None:
        if self.finished_at < self.started_at:
            raise ValueError(
                f"slice_id={self.slice_id}: expected finished_at >= started_at, "
                f"found {self.finished_at.isoformat()} < {self.started_at.isoformat()}"
            )
        if self.attempts < 1 or self.rows < 0:
            raise ValueError(
                f"slice_id={self.slice_id}: expected attempts >= 1 and rows >= 0, "
                f"found attempts={self.attempts} rows={self.rows}"
            )


@dataclass(frozen=True)
class Pause:
    """One lag pause of the backfill."""

    started_at: datetime
    seconds: float


@dataclass(frozen=True)
class RunFacts:
    """What the run recorded, for the charts (all optional: a bare reconcile has none)."""

    slices: tuple[SliceRun, ...] = ()
    pauses: tuple[Pause, ...] = ()
    lag: tuple[tuple[datetime, int], ...] = ()  # (sampled at, largest partition lag)
    cut_taken_at: datetime | None = None

    def window(self) -> tuple[datetime, datetime] | None:
        """First and last instant any fact names (``None`` without facts)."""
        times = [t for s in self.slices for t in (s.started_at, s.finished_at)]
        times += [t for p in self.pauses for t in (p.started_at, _end(p))]
        times += [t for t, _ in self.lag]
        return (min(times), max(times)) if times else None


def _end(p: Pause) -> datetime:
    return p.started_at + timedelta(seconds=p.seconds)


class _Axis:
    """Maps instants of ``[t0, t1]`` onto ``[_LEFT, WIDTH - _RIGHT]``."""

    def __init__(self, t0: datetime, t1: datetime) -> None:
        self.t0 = t0
        self.span = max((t1 - t0).total_seconds(), 1e-3)

    def x(self, t: datetime) -> float:
        return _LEFT + (WIDTH - _LEFT - _RIGHT) * (t - self.t0).total_seconds() / self.span

    def ticks(self, y: float) -> str:
        out = []
        for i in range(6):
            s = self.span * i / 5
            x = _LEFT + (WIDTH - _LEFT - _RIGHT) * i / 5
            out.append(f'<text x="{x:.1f}" y="{y}" font-size="11" text-anchor="middle" '
                       f'fill="#57606a">{fmt(s)} s</text>')  # fmt: skip
        return "".join(out)


def lanes(runs: Sequence[SliceRun]) -> list[int]:
    """A lane per slice: the first lane whose previous slice finished before it started."""
    free: list[datetime] = []
    out = [0] * len(runs)
    for i in sorted(range(len(runs)), key=lambda k: (runs[k].started_at, runs[k].finished_at)):
        r = runs[i]
        lane = next((k for k, end in enumerate(free) if end <= r.started_at), len(free))
        if lane == len(free):
            free.append(r.finished_at)
        free[lane] = r.finished_at
        out[i] = lane
    return out


def _empty(elem_id: str, text: str) -> str:
    return (f'<svg id="{elem_id}" width="{WIDTH}" height="40" role="img" aria-label="{text}">'
            f'<text x="{_LEFT}" y="24" font-size="13" fill="#57606a">{escape(text)}</text>'
            "</svg>")  # fmt: skip


def _slice_bar(r: SliceRun, lane: int, axis: _Axis) -> str:
    x0, x1 = axis.x(r.started_at), axis.x(r.finished_at)
    y = 8 + lane * _LANE_H
    secs = (r.finished_at - r.started_at).total_seconds()
    tip = escape(f"{r.slice_id} ({r.kind}): {fmt(r.rows)} rows in {secs:.2f} s, "
                 f"attempts={r.attempts}")  # fmt: skip
    retry = r.attempts > 1
    stroke = ' stroke="#bc4c00" stroke-width="2"' if retry else ""
    bar = (f'<rect class="slice{" retried" if retry else ""}" x="{x0:.1f}" y="{y}" '
           f'width="{max(x1 - x0, 1.5):.1f}" height="{_LANE_H - 4}" rx="2" '
           f'fill="{_KIND_FILL.get(r.kind, "#6e7781")}"{stroke}><title>{tip}</title></rect>')  # fmt: skip
    if retry:
        bar += (f'<text x="{x1 + 2:.1f}" y="{y + 11}" font-size="10" fill="#bc4c00">'
                f"&#215;{r.attempts}</text>")  # fmt: skip
    return bar


def timeline_svg(facts: RunFacts) -> str:
    """The slice Gantt (``id="timeline"``)."""
    window = facts.window()
    if not facts.slices or window is None:
        return _empty("timeline", "no slice timings recorded (run the backfill first)")
    axis = _Axis(*window)
    lane_of = lanes(facts.slices)
    n = max(lane_of) + 1
    height = 8 + n * _LANE_H + 24
    labels = "".join(
        f'<text x="{_LEFT - 6}" y="{8 + k * _LANE_H + 11}" font-size="11" text-anchor="end" '
        f'fill="#57606a">worker {k + 1}</text>'
        for k in range(n)
    )
    bands = "".join(_pause_band(p, axis, height - 20) for p in facts.pauses)
    bars = "".join(_slice_bar(r, k, axis) for r, k in zip(facts.slices, lane_of, strict=True))
    return (f'<svg id="timeline" width="{WIDTH}" height="{height}" role="img" '
            f'aria-label="slice timeline">{bands}{labels}{bars}{axis.ticks(height - 6)}</svg>')  # fmt: skip


def _pause_band(p: Pause, axis: _Axis, height: float) -> str:
    x0, x1 = axis.x(p.started_at), axis.x(_end(p))
    return (f'<rect class="pause" x="{x0:.1f}" y="0" width="{max(x1 - x0, 2):.1f}" '
            f'height="{height}" fill="#fff8c5" stroke="#d4a72c"><title>backfill paused '
            f"{p.seconds:.1f} s for live lag</title></rect>")  # fmt: skip


def rate_series(runs: Sequence[SliceRun], t0: datetime, span: float, bins: int) -> list[float]:
    """Rows/s per time bin: each slice's rows spread evenly over its run time."""
    width = span / bins
    out = [0.0] * bins
    for r in runs:
        a = (r.started_at - t0).total_seconds()
        b = max((r.finished_at - t0).total_seconds(), a + 1e-6)
        per_s = r.rows / (b - a)
        for k in range(max(0, int(a // width)), min(bins, int(b // width) + 1)):
            lo, hi = max(a, k * width), min(b, (k + 1) * width)
            if hi > lo:
                out[k] += per_s * (hi - lo) / width
    return out


def _polyline(points: list[tuple[float, float]], colour: str, cls: str) -> str:
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return (f'<polyline class="{cls}" points="{pts}" fill="none" stroke="{colour}" '
            'stroke-width="2"/>')  # fmt: skip


def throughput_svg(facts: RunFacts, *, bins: int = 60) -> str:
    """Rows/s (left axis), live lag (right axis) and pause bands (``id="throughput"``)."""
    window = facts.window()
    if window is None:
        return _empty("throughput", "no throughput or lag recorded")
    axis, top, h = _Axis(*window), 16, 160
    rates = rate_series(facts.slices, axis.t0, axis.span, bins)
    peak, lag_peak = max([*rates, 1.0]), max([v for _, v in facts.lag] + [1])
    step = (WIDTH - _LEFT - _RIGHT) / bins
    rate_pts = [(_LEFT + step * (k + 0.5), top + h * (1 - v / peak)) for k, v in enumerate(rates)]
    lag_pts = [(axis.x(t), top + h * (1 - v / lag_peak)) for t, v in facts.lag]
    bands = "".join(_pause_band(p, axis, top + h) for p in facts.pauses)
    lines = _polyline(rate_pts, "#0969da", "rows-per-s") if facts.slices else ""
    lines += _polyline(lag_pts, "#cf222e", "live-lag") if lag_pts else ""
    frame = (f'<line x1="{_LEFT}" y1="{top + h}" x2="{WIDTH - _RIGHT}" y2="{top + h}" '
             'stroke="#8c959f"/>'
             f'<text x="{_LEFT - 6}" y="{top + 4}" font-size="11" text-anchor="end" '
             f'fill="#0969da">{fmt(peak)}</text><text x="{_LEFT - 6}" y="{top + h}" '
             'font-size="11" text-anchor="end" fill="#0969da">0 rows/s</text>'
             f'<text x="{WIDTH - _RIGHT + 6}" y="{top + 4}" font-size="11" fill="#cf222e">'
             f'{fmt(lag_peak) if lag_pts else "-"}</text><text x="{WIDTH - _RIGHT + 6}" '
             f'y="{top + h}" font-size="11" fill="#cf222e">0 lag</text>')  # fmt: skip
    height = top + h + 24
    return (f'<svg id="throughput" width="{WIDTH}" height="{height}" role="img" '
            f'aria-label="rows per second and live lag">{bands}{frame}{lines}'
            f"{axis.ticks(height - 6)}</svg>")  # fmt: skip


def _grid_geometry(n: int) -> tuple[int, int]:
    cols = max(1, min(n, (WIDTH - _LEFT) // (_CELL + _GAP)))
    return cols, -(-n // cols)


def _partition_fill(p: PartitionCoverage) -> tuple[str, str]:
    if not p.ok:
        return _BAD, "bad-mark"
    if any(getattr(p, k) for k in INFO):
        return _INFO_FILL, "info"
    return _OK, "ok"


def _cell(i: int, cols: int, fill: str, cls: str, tip: str) -> str:
    x, y = _LEFT + (i % cols) * (_CELL + _GAP), 4 + (i // cols) * (_CELL + _GAP)
    return (f'<rect class="cell {cls}" x="{x}" y="{y}" width="{_CELL}" height="{_CELL}" '
            f'fill="{fill}"><title>{escape(tip)}</title></rect>')  # fmt: skip


def _partition_tip(p: PartitionCoverage) -> str:
    counts = " ".join(f"{k}={fmt(getattr(p, k))}" for k in (*FAILING, *INFO) if getattr(p, k))
    return (f"partition={p.partition} [{fmt(p.log_start)}, {fmt(p.hwm)}) live to "
            f"{fmt(p.end)}: source={fmt(p.source_records)} table={fmt(p.table_rows)} "
            f"{counts or 'all counts 0'}")


def coverage_grid_svg(partitions: Sequence[PartitionCoverage]) -> str:
    """One cell per partition, green ok / amber info counts / red failing
    (``id="coverage-grid"``)."""
    if not partitions:
        return _empty("coverage-grid", "no Kafka partitions in the cut")
    cols, rows = _grid_geometry(len(partitions))
    cells = "".join(
        _cell(i, cols, *_partition_fill(p), _partition_tip(p)) for i, p in enumerate(partitions)
    )
    height = 8 + rows * (_CELL + _GAP)
    label = (f'<text x="{_LEFT - 6}" y="16" font-size="11" text-anchor="end" '
             f'fill="#57606a">p0…p{partitions[-1].partition}</text>')  # fmt: skip
    return (f'<svg id="coverage-grid" width="{WIDTH}" height="{height}" role="img" '
            f'aria-label="offset coverage per partition">{label}{cells}</svg>')  # fmt: skip


def bucket_grid_svg(slices: Sequence[SliceReport]) -> str:
    """One cell per archive bucket, in bucket order (``id="archive-grid"``)."""
    buckets = sorted((s for s in slices if s.kind == "archive"), key=lambda s: s.scope)
    if not buckets:
        return _empty("archive-grid", "no archive buckets in this job")
    cols, rows = _grid_geometry(len(buckets))
    cells = "".join(
        _cell(i, cols, _OK if s.matches else _BAD, "ok" if s.matches else "bad-bucket",
              f"{s.scope} ({s.slice_id}): source={fmt(s.source.rows)} "
              f"table={fmt(s.table.rows)} {s.verdict}")
        for i, s in enumerate(buckets)
    )
    height = 8 + rows * (_CELL + _GAP)
    label = (f'<text x="{_LEFT - 6}" y="16" font-size="11" text-anchor="end" '
             'fill="#57606a">by time</text>')  # fmt: skip
    return (f'<svg id="archive-grid" width="{WIDTH}" height="{height}" role="img" '
            f'aria-label="archive buckets">{label}{cells}</svg>')  # fmt: skip
