"""What ``seamline demo`` prints: the summary document (JSON) and its text form.

The summary's counts come from the final reconciliation; ``table_rows`` is counted in the
table itself, so ``table_rows == source_records - quarantined`` is a real check.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from coordinator.core.jobspec import JobSpec
from coordinator.state.base import safe_url
from reconcile.model import ReconcileReport

log = logging.getLogger(__name__)

COUNTS = ("lost", "duplicated", "phantom", "overlap", "gap", "wrong_side")


def table_json(job: JobSpec) -> dict[str, Any]:
    """Where the table is, so anyone can open it after the demo."""
    t = job.table
    catalog = t.catalog_spec()
    if t.format == "iceberg" and catalog is not None:
        return {
            "format": "iceberg",
            "identifier": t.identifier,
            "catalog_type": catalog.type,
            "catalog_name": catalog.name,
            # masked: a catalog URL may carry a password, and this JSON is printed
            "catalog_uri": safe_url(catalog.uri.get_secret_value()) if catalog.uri else None,
            "warehouse": t.catalog_warehouse(),
        }
    uri = str(t.uri)
    return {"format": "lance", "uri": uri if "://" in uri else str(job.resolve(uri))}


def source_records(report: ReconcileReport) -> int:
    """Archive rows plus Kafka records (``ReconcileReport.totals`` defines it)."""
    return report.totals()["source_records"]


def reconcile_counts(report: ReconcileReport) -> dict[str, Any]:
    """The verdict and the counts that must all be 0, plus quarantined and mismatches."""
    totals = report.totals()
    doc: dict[str, Any] = {"reconciled": report.reconciled}
    doc.update({k: totals[k] for k in COUNTS})
    doc["quarantined"] = totals["quarantined"]
    doc["mismatched_slices"] = totals["mismatched_slices"]
    doc["source_records"] = source_records(report)
    return doc


def render_summary_text(doc: dict[str, Any], width: int = 100) -> str:
    """The summary as a rich table plus how to open the table."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    verdict = "RECONCILED" if doc["reconciled"] else "NOT RECONCILED"
    table = Table(title=f"seamline demo: {verdict} ({doc['table']['format']})")
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("source records (archive + Kafka)", f"{doc['source_records']:,}"),
        ("table rows", f"{doc['table_rows']:,}"),
        *((k, str(doc[k])) for k in COUNTS),
        ("quarantined (malformed, dead-lettered)", str(doc["quarantined"])),
        ("slices (archive months + topic ranges)", f"{doc['slices']} "
         f"({doc['archive_slices']} + {doc['kafka_slices']})"),
        ("backfill rows/s", f"{doc['backfill_rows_per_s']:,.0f}"),
        ("live records produced (late, malformed)", f"{doc['live_records']:,} "
         f"({doc['late_events']}, {doc['malformed_records']})"),
        ("late events in the table", str(doc["late_events_in_table"])),
        ("live lag max (records)", f"{doc['live_lag_max']:,}"),
        ("backfill paused for live lag (s)", f"{doc['paused_s']:.1f}"),
        ("wall time (s)", f"{doc['wall_seconds']:.1f}"),
    ]  # fmt: skip
    rep = doc.get("reprocess")
    if rep is not None:
        rows.append(("incident week (rows broken, detected, repaired)",
                     f"{rep['week'][0][:10]} ({rep['rows_rewritten_by_bug']:,}, "
                     f"{rep['detected']}, {rep['repaired']})"))  # fmt: skip
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
    t = doc["table"]
    where = (f"{t['identifier']} in catalog {t['catalog_uri']} (warehouse {t['warehouse']})"
             if t["format"] == "iceberg" else t["uri"])  # fmt: skip
    lines = [
        f"table: {where}",
        f"job file: {doc['job_file']}   HTML report: {doc['html_report']}",
    ]
    steps = doc.get("next_steps") or []
    if steps:
        lines.append("next (paste these):")
        lines += [f"  {step}" for step in steps]
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    return out.getvalue()


def next_steps(
    job_file: str, broker_kind: str, broker_dir: str, html: str, services: Sequence[str] = ()
) -> list[str]:
    """Commands that work after the demo, in order (the demo stops a broker and the servers
    it started; ``services`` are the commands restarting those servers)."""
    steps = list(services)
    if broker_kind == "local":
        steps.append(f"uv run seamline broker start --data-dir {broker_dir}")
    steps += [
        f"uv run seamline status {job_file}",
        f"uv run seamline plan {job_file}",
        f"uv run seamline reconcile {job_file} --html {html}",
    ]
    if broker_kind == "local":
        steps.append(f"uv run seamline broker stop --data-dir {broker_dir}")
    for start in reversed(services):  # the servers started above, stopped in reverse
        if start.startswith("uv run seamline ") and " start " in start:
            steps.append(start.replace(" start ", " stop ", 1))
    return steps
