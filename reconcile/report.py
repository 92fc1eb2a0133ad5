"""Renderers of a :class:`ReconcileReport`: text (rich tables), JSON, and one HTML page.

The HTML page is self-contained (inline CSS and SVG, no scripts): a verdict banner, one offset
line per partition (history ``[log_start, hwm)``, the cut, the live range ``[hwm, end)``, and
every sampled lost/gap/duplicated/overlap/phantom offset as a red mark), the coverage counts
and the slice table with the drill-down sample of each mismatching slice.
"""

from __future__ import annotations

import io
import json
from html import escape
from typing import Final

from rich.console import Console
from rich.table import Table

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


def render_text(report: ReconcileReport, *, width: int = 200) -> str:
    """Rich tables: partitions, slices, then the named differences."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    console.print(f"job={report.job_id} topic={report.topic} scheme={report.scheme}")
    parts = Table(title="coverage per partition")
    for col in ("partition", "log_start", "hwm", "end", "source", "table", *FAILING, *INFO):
        parts.add_column(col, justify="right")
    for p in report.partitions:
        parts.add_row(
            str(p.partition), str(p.log_start), str(p.hwm), str(p.end), str(p.source_records),
            str(p.table_rows), *(str(getattr(p, k)) for k in (*FAILING, *INFO)),
        )  # fmt: skip
    console.print(parts)
    console.print(_dead_letter_line(report))
    if report.keys is not None:
        console.print(_keys_line(report.keys))
        for d in report.keys.samples:
            console.print(f"  duplicate key {d.key}: {d.rows} rows at {list(d.where)}")
    slices = Table(title="slices")
    for col in ("slice", "kind", "scope", "source rows", "table rows", "verdict", "differences"):
        slices.add_column(col)
    for s in report.slices:
        slices.add_row(
            s.slice_id, s.kind, s.scope, str(s.source.rows), str(s.table.rows), s.verdict,
            _diff_summary(s),
        )  # fmt: skip
    console.print(slices)
    for s in report.mismatched:
        for row in s.drilldown.rows if s.drilldown else ():
            console.print(f"  {s.slice_id}: {row.kind} at {row.where}")
    console.print(_verdict(report))
    return out.getvalue()


def _dead_letter_line(report: ReconcileReport) -> str:
    where = f"topic={report.dead_letter_topic}" if report.dead_letter_topic else "given by caller"
    quarantined = report.totals()["quarantined"]
    return f"dead letters ({where}): {report.dead_letters} listed; quarantined={quarantined}"


def _keys_line(keys: KeyCheck) -> str:
    verdict = "unique" if keys.ok else f"NOT unique: duplicated={keys.duplicated}"
    return f"business key {list(keys.key)} over the {keys.domain} ({keys.rows} rows): {verdict}"


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


_CSS: Final = """
body{font:15px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24;max-width:1100px}
.banner{padding:18px 24px;border-radius:8px;font-size:28px;font-weight:700;color:#fff}
.ok{background:#1a7f37}.bad{background:#cf222e}
.sub{font-size:15px;font-weight:400;opacity:.95}
table{border-collapse:collapse;width:100%;margin:8px 0 24px}
th,td{border-bottom:1px solid #d0d7de;padding:4px 8px;text-align:left;font-size:13px}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.mismatch td{background:#ffebe9}.match{color:#1a7f37;font-weight:600}
.mism{color:#cf222e;font-weight:600}svg{display:block;margin:4px 0 12px}
.legend span{display:inline-block;margin-right:16px;font-size:13px}
.sw{width:12px;height:12px;display:inline-block;vertical-align:middle;margin-right:4px}
"""


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
        f'text-anchor="middle" font-size="12">cut hwm={p.hwm}</text>'
    )
    marks = []
    for kind in FAILING:
        for o in p.samples.get(kind, ()):
            marks.append(
                f'<rect class="bad-mark" x="{_x(o, p) - 2:.1f}" y="{y - 6}" width="5" height="28" '
                f'fill="#cf222e"><title>{kind} offset {o}</title></rect>'
            )
    labels = (
        f'<text x="{_PAD}" y="78" font-size="12">{p.log_start}</text>'
        f'<text x="{_W - _PAD}" y="78" font-size="12" text-anchor="end">end={p.end}</text>'
    )
    return (
        f'<svg width="{_W}" height="86" role="img" aria-label="partition {p.partition}">'
        f"{hist}{live}{cut}{''.join(marks)}{labels}</svg>"
    )


def _coverage_line(p: PartitionCoverage) -> str:
    cells = " · ".join(
        f'<span class="{"mism" if getattr(p, k) and k in FAILING else ""}">{k}={getattr(p, k)}</span>'
        for k in (*FAILING, *INFO)
    )
    return f"<div>source records={p.source_records} table rows={p.table_rows} · {cells}</div>"


def _slice_rows(report: ReconcileReport) -> str:
    rows = []
    for s in report.slices:
        cls = "match" if s.matches else "mism"
        rows.append(
            f'<tr class="{"ok-row" if s.matches else "mismatch"}"><td>{escape(s.slice_id)}</td><td>{s.kind}</td>'
            f"<td>{escape(s.scope)}</td><td class=num>{s.source.rows}</td>"
            f"<td class=num>{s.table.rows}</td><td><code>{s.source.sum:016x}</code></td>"
            f'<td><code>{s.table.sum:016x}</code></td><td class="{cls}">{s.verdict}</td>'
            f"<td>{escape(_diff_summary(s))}</td></tr>"
        )
        for d in s.drilldown.rows if s.drilldown else ():
            rows.append(
                f'<tr class="mismatch"><td></td><td colspan=8>{d.kind} at '
                f"{escape(json.dumps(d.to_json()['where']))}: source="
                f"{escape(json.dumps(d.to_json()['source']))} table="
                f"{escape(json.dumps(d.to_json()['table']))}</td></tr>"
            )
    return "".join(rows)


def render_html(report: ReconcileReport) -> str:
    """One self-contained HTML page a person reads at a glance."""
    ok = report.reconciled
    totals = report.totals()
    sub = (
        f"job {escape(report.job_id)} · topic {escape(report.topic)} · "
        f"{len(report.slices)} slices, {totals['mismatched_slices']} mismatched · "
        f"{totals['source_rows']} source rows, {totals['table_rows']} table rows · "
        f"lost {totals['lost']} · in flight {totals['in_flight']} · overlap "
        f"{totals['overlap']} · gap {totals['gap']} · quarantined {totals['quarantined']} · "
        f"superseded {totals['superseded']} · duplicate keys {totals['duplicate_keys']}"
    )
    keys = ""
    if report.keys is not None:
        samples = "".join(
            f"<li>{escape(json.dumps(d.to_json()))}</li>" for d in report.keys.samples
        )
        cls = "match" if report.keys.ok else "mism"
        keys = f'<p class="{cls}" id="keys">{escape(_keys_line(report.keys))}</p><ul>{samples}</ul>'

    parts = "".join(
        f"<h3>partition {p.partition}</h3>{_partition_svg(p)}{_coverage_line(p)}"
        for p in report.partitions
    )
    legend = (
        '<div class="legend"><span><i class="sw" style="background:#0969da"></i>history '
        '(backfill)</span><span><i class="sw" style="background:#8c959f"></i>live</span>'
        '<span><i class="sw" style="background:#cf222e"></i>lost / gap / duplicated / '
        "overlap / phantom</span></div>"
    )
    head = (
        "<tr><th>slice</th><th>kind</th><th>scope</th><th>source rows</th><th>table rows</th>"
        "<th>source sum</th><th>table sum</th><th>verdict</th><th>differences</th></tr>"
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>seamline reconcile '
        f"{escape(report.job_id)}</title><style>{_CSS}</style></head><body>"
        f'<div id="verdict" class="banner {"ok" if ok else "bad"}" '
        f'data-reconciled="{"true" if ok else "false"}">{_verdict(report)}'
        f'<div class="sub">{sub}</div></div>'
        f"<h2>Offsets per partition</h2>{legend}{parts}"
        f'<p id="dead-letters">{escape(_dead_letter_line(report))}</p>{keys}'
        f"<h2>Slices</h2><table>{head}{_slice_rows(report)}</table>"
        f"<p class=sub>checksum scheme {escape(report.scheme)} · run at "
        f"{report.run_at.isoformat()} · min age {report.min_age_s}s</p></body></html>"
    )
