"""Renderers of a :class:`ReconcileReport`: text (rich tables), JSON, and one HTML page.

The HTML page (Jinja2 template ``templates/report.html.j2``) is self-contained: inline CSS and
SVG drawn by :mod:`reconcile.charts`, no scripts, nothing fetched. Top to bottom: the verdict
(job, cut time, generation time) and totals with thousands separators; mismatching slices
first with their drill-down rows; the offset line of every partition with a failing count
(sampled offsets as red marks); the slice timeline (Gantt by worker, retries marked); rows/s
and live lag over time with lag-pause bands; a compact coverage grid (one cell per partition,
fine at 1,000 partitions) and one cell per archive bucket; the dead letters, keys and the
full slice table (mismatches first, folded when long).
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any, Final, Literal

import jinja2
from markupsafe import Markup
from rich.console import Console
from rich.table import Table

from reconcile.charts import (
    RunFacts,
    bucket_grid_svg,
    coverage_grid_svg,
    fmt,
    throughput_svg,
    timeline_svg,
)
from reconcile.coverage import FAILING, INFO, PartitionCoverage
from reconcile.keys import KeyCheck
from reconcile.model import ReconcileReport, SliceReport

_W: Final = 1000
_PAD: Final = 40


def render_json(report: ReconcileReport) -> str:
    """The JSON document (stable key order, 2-space indent)."""
    return json.dumps(report.to_json(), indent=2, allow_nan=False)


def _verdict(report: ReconcileReport) -> str:
    return "RECONCILED" if report.reconciled else "NOT RECONCILED"


#: Rows per table ``render_text`` shows by default before "... N more".
TEXT_ROWS: Final = 20

TextShow = Literal["summary", "all", "mismatched"]


def render_text(report: ReconcileReport, *, width: int = 200, show: TextShow = "summary",
                limit: int = TEXT_ROWS) -> str:  # fmt: skip
    """Rich tables that scale: the totals line, partitions then units with problems first,
    ``limit`` rows each unless ``show="all"``; ``show="mismatched"`` lists only failing
    partitions and mismatched units. Counts with thousands separators; count columns that
    are 0 in every partition are left out (the totals line still names them)."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    console.print(f"job={report.job_id} topic={report.topic} scheme={report.scheme}")
    console.print(totals_line(report))
    console.print(_partition_table(report, show, limit))
    console.print(_dead_letter_line(report))
    if report.keys is not None:
        console.print(_keys_line(report.keys))
        for d in report.keys.samples:
            console.print(f"  duplicate key {d.key}: {d.rows} rows at {list(d.where)}")
    console.print(_unit_table(report, show, limit))
    for s in report.mismatched:
        for row in s.drilldown.rows if s.drilldown else ():
            console.print(f"  {s.slice_id}: {row.kind} at {row.where}")
    console.print(_verdict(report))
    return out.getvalue()


def _more(shown: int, total: int, what: str, show: TextShow) -> str | None:
    if shown >= total:
        return None
    flag = "--all" if show == "summary" else "--all to list every one"
    return f"... {fmt(total - shown)} more {what} ({flag})"


def _partition_table(report: ReconcileReport, show: TextShow, limit: int) -> Table:
    counts = [k for k in (*FAILING, *INFO) if any(getattr(p, k) for p in report.partitions)]
    ordered = sorted(report.partitions,  # failing first, then those with informational counts
                     key=lambda p: (p.ok, not any(getattr(p, k) for k in INFO), p.partition))
    chosen = [p for p in ordered if show != "mismatched" or not p.ok]
    shown = chosen if show == "all" else chosen[:limit]
    bad = sum(1 for p in report.partitions if not p.ok)
    table = Table(title=f"coverage of {fmt(len(report.partitions))} partitions, "
                        f"{fmt(bad)} failing")  # fmt: skip
    for col in ("partition", "log_start", "hwm", "end", "source", "table", *counts):
        table.add_column(col, justify="right")
    for p in shown:
        table.add_row(str(p.partition), *(fmt(getattr(p, k)) for k in (
            "log_start", "hwm", "end", "source_records", "table_rows", *counts)))  # fmt: skip
    more = _more(len(shown), len(chosen), "partitions", show)
    if more:
        table.add_row(more, *([""] * (5 + len(counts))))
    return table


def _unit_table(report: ReconcileReport, show: TextShow, limit: int) -> Table:
    ordered = sorted(report.slices, key=lambda s: s.matches)  # stable: mismatches first
    chosen = [s for s in ordered if show != "mismatched" or not s.matches]
    shown = chosen if show == "all" else chosen[:limit]
    table = Table(title=f"{fmt(len(report.slices))} compared units, "
                        f"{fmt(len(report.mismatched))} mismatched")  # fmt: skip
    for col in ("slice", "kind", "scope", "source rows", "table rows", "verdict", "differences"):
        table.add_column(col, justify="right" if col.endswith("rows") else "left")
    for s in shown:
        table.add_row(s.slice_id, s.kind, s.scope, fmt(s.source.rows), fmt(s.table.rows),
                      s.verdict, _diff_summary(s))  # fmt: skip
    more = _more(len(shown), len(chosen), "units", show)
    if more:
        table.add_row(more, "", "", "", "", "", "")
    return table


def _dead_letter_line(report: ReconcileReport) -> str:
    where = f"topic={report.dead_letter_topic}" if report.dead_letter_topic else "given by caller"
    totals = report.totals()
    line = f"dead letters ({where}): {report.dead_letters} listed; quarantined={totals['quarantined']}"
    if totals["archive_quarantined"]:
        line += f"; archive rows quarantined={totals['archive_quarantined']}"
    return line


def _keys_line(keys: KeyCheck) -> str:
    verdict = "unique" if keys.ok else f"NOT unique: duplicated={fmt(keys.duplicated)}"
    return f"business key {list(keys.key)} over the {keys.domain} ({fmt(keys.rows)} rows): {verdict}"


def _diff_summary(s: SliceReport) -> str:
    parts = []
    if s.drilldown:
        d = s.drilldown
        parts = [f"{k}={getattr(d, k)}" for k in ("missing", "extra", "changed") if getattr(d, k)]
    if s.duplicate_keys:
        parts.append(f"duplicate_keys={s.duplicate_keys}")
    if s.superseded:
        parts.append(f"superseded={s.superseded}")
    return " ".join(parts)


_ENV: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("reconcile", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=False,
)


def _x(offset: int, p: PartitionCoverage) -> float:
    span = max(p.end, p.hwm, 1)
    return _PAD + (_W - 2 * _PAD) * offset / span


def _partition_svg(p: PartitionCoverage) -> str:
    y = 34
    hist = f'<rect x="{_x(p.log_start, p):.1f}" y="{y}" width="{_x(p.hwm, p) - _x(p.log_start, p):.1f}" height="16" fill="#0969da"/>'
    live = f'<rect x="{_x(p.hwm, p):.1f}" y="{y}" width="{max(0.0, _x(p.end, p) - _x(p.hwm, p)):.1f}" height="16" fill="#8c959f"/>'
    cut = (
        f'<line x1="{_x(p.hwm, p):.1f}" y1="18" x2="{_x(p.hwm, p):.1f}" y2="62" '
        f'stroke="#1b1f24" stroke-width="2"/><text x="{_x(p.hwm, p):.1f}" y="14" '
        f'text-anchor="middle" font-size="12">cut hwm={fmt(p.hwm)}</text>'
    )
    marks = []
    for kind in FAILING:
        for o in p.samples.get(kind, ()):
            marks.append(
                f'<rect class="bad-mark" x="{_x(o, p) - 2:.1f}" y="{y - 6}" width="5" height="28" '
                f'fill="#cf222e"><title>{kind} offset {o}</title></rect>'
            )
    labels = (
        f'<text x="{_PAD}" y="78" font-size="12">{fmt(p.log_start)}</text>'
        f'<text x="{_W - _PAD}" y="78" font-size="12" text-anchor="end">end={fmt(p.end)}</text>'
    )
    return (
        f'<svg width="{_W}" height="86" role="img" aria-label="partition {p.partition}">'
        f"{hist}{live}{cut}{''.join(marks)}{labels}</svg>"
    )


def _counts(p: PartitionCoverage) -> str:
    cells = " · ".join(f"{k}={fmt(getattr(p, k))}" for k in (*FAILING, *INFO))
    return f"source records={fmt(p.source_records)} table rows={fmt(p.table_rows)} · {cells}"


def _facts(report: ReconcileReport) -> list[tuple[str, str, bool]]:
    t = report.totals()  # the one definition of the source totals (JSON and text alike)
    kinds = [s.kind for s in report.slices]
    out = [
        ("source records (archive + Kafka)", f"{fmt(t['source_records'])} "
         f"({fmt(t['archive_records'])} + {fmt(t['kafka_records'])})", False),
        ("source rows / table rows", f"{fmt(t['source_rows'])} / {fmt(t['table_rows'])}",
         t["source_rows"] != t["table_rows"]),
        ("slices (archive / Kafka)", f"{fmt(t['slices'])} ({fmt(kinds.count('archive'))} / "
         f"{fmt(kinds.count('history'))})", False),
        ("live ranges compared", fmt(t["live_units"]), False),
        ("mismatched", fmt(t["mismatched_slices"]), t["mismatched_slices"] > 0),
    ]  # fmt: skip
    for k in ("lost", "in_flight", "overlap", "gap", "duplicated", "phantom"):
        out.append((k.replace("_", " "), fmt(t.get(k, 0)), t.get(k, 0) > 0))
    for k in ("quarantined", "archive_quarantined", "superseded"):
        out.append((k.replace("_", " "), fmt(t.get(k, 0)), False))
    if t["tombstones"] or t["deleted_keys"]:
        out.append(("tombstones / deleted keys", f"{fmt(t['tombstones'])} / "
                    f"{fmt(t['deleted_keys'])}", False))  # fmt: skip
    return out


def totals_line(report: ReconcileReport) -> str:
    """One line of the totals, worded the same in the terminal and the HTML report."""
    t = report.totals()
    return (
        f"{fmt(t['source_records'])} source records ({fmt(t['archive_records'])} archive + "
        f"{fmt(t['kafka_records'])} Kafka, {fmt(t['quarantined'])} quarantined) · "
        f"{fmt(t['source_rows'])} source rows, {fmt(t['table_rows'])} table rows · "
        f"{fmt(t['slices'])} slices + {fmt(t['live_units'])} live ranges, "
        f"{fmt(t['mismatched_slices'])} mismatched · lost {fmt(t['lost'])} · in flight "
        f"{fmt(t['in_flight'])} · overlap {fmt(t['overlap'])} · gap {fmt(t['gap'])} · "
        f"duplicated {fmt(t['duplicated'])} · phantom {fmt(t['phantom'])} · superseded "
        f"{fmt(t['superseded'])} · duplicate keys {fmt(t['duplicate_keys'])}"
    ) + (
        f" · tombstones {fmt(t['tombstones'])} (deleted keys {fmt(t['deleted_keys'])})"
        if t["tombstones"] or t["deleted_keys"]
        else ""
    )


def _context(report: ReconcileReport, facts: RunFacts, now: datetime) -> dict[str, Any]:
    ordered = sorted(report.slices, key=lambda s: s.matches)  # stable: mismatches first
    failing = [(p, Markup(_partition_svg(p))) for p in report.partitions if not p.ok]  # noqa: S704
    cut = facts.cut_taken_at
    charts = {
        "timeline": timeline_svg(facts), "throughput": throughput_svg(facts),
        "coverage": coverage_grid_svg(report.partitions), "archive": bucket_grid_svg(report.slices),
    }  # fmt: skip
    return {
        "report": report, "verdict": _verdict(report), "facts": _facts(report),
        "summary": totals_line(report),
        "cut_time": cut.isoformat(timespec="seconds") if cut else "(not recorded)",
        "generated": now.isoformat(timespec="seconds"), "mismatched": list(report.mismatched),
        "failing": failing, "ordered": ordered, "fmt": fmt, "diff": _diff_summary,
        "counts": _counts, "dead_letters": _dead_letter_line(report),
        "keys_line": _keys_line(report.keys) if report.keys is not None else "",
        "buckets": sum(1 for s in report.slices if s.kind == "archive"),
        **{k: Markup(v) for k, v in charts.items()},  # noqa: S704 - our SVG, text escaped
    }  # fmt: skip


def render_html(
    report: ReconcileReport, facts: RunFacts | None = None, *, now: datetime | None = None
) -> str:
    """One self-contained HTML page a person reads at a glance (see the module doc).

    ``facts`` (slice timings, pauses, lag samples, cut time) feeds the timeline and the
    throughput chart; without it those charts say that nothing was recorded.
    """
    ctx = _context(report, facts or RunFacts(), (now or datetime.now(UTC)).astimezone(UTC))
    return _ENV.get_template("report.html.j2").render(ctx)
