"""``seamline reconcile``'s text output summarises (problems first, ``--all``,
``--mismatched``), and the "source" totals are one definition shown alike by the terminal, the
JSON document, the HTML report and the demo's summary."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from click.testing import CliRunner

from coordinator.cli.main import cli
from coordinator.demo.report import reconcile_counts
from reconcile.checksum import Checksum
from reconcile.coverage import PartitionCoverage
from reconcile.model import ReconcileReport, SliceReport
from reconcile.report import render_html, render_json, render_text

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def _unit(sid: str, kind: str, rows: int, table_rows: int | None = None) -> SliceReport:
    src = Checksum(rows, 7, 9)
    tab = src if table_rows is None else Checksum(table_rows, 1, 2)
    return SliceReport(sid, kind, f"scope-{sid}", src, tab)  # type: ignore[arg-type]


def _report() -> ReconcileReport:
    """40 partitions (partition 33 lost 2 records, partition 5 quarantined 3); 30 archive
    buckets of 1,000 rows, 30 Kafka slices of 2,500, 4 live units of 100, one bad slice."""
    parts = [PartitionCoverage(p, 0, 2_000, 2_100, 2_100, 2_100) for p in range(40)]
    parts[33] = PartitionCoverage(33, 0, 2_000, 2_100, 2_100, 2_098, lost=2,
                                  samples={"lost": (5, 6)})  # fmt: skip
    parts[5] = PartitionCoverage(5, 0, 2_000, 2_100, 2_100, 2_097, quarantined=3)
    units = [_unit(f"a-{i:02d}", "archive", 1_000) for i in range(30)]
    units += [_unit(f"k-{i:02d}", "history", 2_500) for i in range(30)]
    units += [_unit(f"live-{i}", "live", 100) for i in range(4)]
    units[47] = _unit("k-17", "history", 2_500, table_rows=2_498)
    return ReconcileReport("orders", "orders-topic", T0, 0.0, tuple(units), tuple(parts))


def test_text_summarises_problems_first_with_more_rows_behind_all() -> None:
    text = render_text(_report())
    lines = text.splitlines()
    rows = [ln for ln in lines if re.search(r"[│|] (a-|k-|live-)", ln)]
    assert len(rows) == 20 and "k-17" in rows[0] and "mismatch" in rows[0]
    assert "44 more units (--all)" in text
    parts = [ln for ln in lines if re.match(r"^\s*[│|]\s+\d+ [│|]", ln)]
    assert len(parts) == 20 and re.match(r"^\s*[│|]\s+33 ", parts[0])  # failing partition first
    assert re.match(r"^\s*[│|]\s+5 ", parts[1])  # then the one with quarantined records
    assert "20 more partitions (--all)" in text
    header = next(ln for ln in lines if "partition" in ln and "log_start" in ln)
    assert "lost" in header and "quarantined" in header and "phantom" not in header
    assert "2,500" in text and "2,100" in text  # thousands separators
    assert text.rstrip().endswith("NOT RECONCILED")


def test_text_all_and_mismatched() -> None:
    full = render_text(_report(), show="all")
    assert all(f"k-{i:02d}" in full for i in range(30)) and "live-3" in full
    assert "more units" not in full and "more partitions" not in full
    bad = render_text(_report(), show="mismatched")
    assert "k-17" in bad and "k-16" not in bad and "a-00" not in bad
    parts = [ln for ln in bad.splitlines() if re.match(r"^\s*[│|]\s+\d+ [│|]", ln)]
    assert len(parts) == 1 and re.match(r"^\s*[│|]\s+33 ", parts[0])


def test_one_source_total_in_terminal_json_html_and_demo() -> None:
    report = _report()
    totals = json.loads(render_json(report))["totals"]
    # archive rows + Kafka records (quarantined included); live units are never slices
    assert totals["source_records"] == 30 * 1_000 + 40 * 2_100 == 114_000
    assert totals["quarantined"] == 3 and totals["slices"] == 60 and totals["live_units"] == 4
    assert reconcile_counts(report)["source_records"] == totals["source_records"]
    text, html = render_text(report), render_html(report)
    phrase = "114,000 source records (30,000 archive + 84,000 Kafka, 3 quarantined)"
    assert phrase in text and phrase in html
    assert "60 slices + 4 live ranges" in text and "60 slices + 4 live ranges" in html
    assert "60 (30 / 30)" in html  # the slices fact: archive / Kafka, live ranges apart
    assert f"{totals['source_rows']:,} source rows" in text
    assert f"{totals['source_rows']:,} source rows" in html


def test_reconcile_names_job_file_and_refuses_all_with_mismatched() -> None:
    runner = CliRunner()
    assert "JOB_FILE" in runner.invoke(cli, ["reconcile", "--help"]).output
    res = runner.invoke(cli, ["reconcile", "x.toml", "--all", "--mismatched"])
    assert res.exit_code == 2 and "choose one of --all and --mismatched" in res.output


def test_tombstones_and_deleted_keys_are_counted_apart_in_every_rendering() -> None:
    from dataclasses import replace

    from reconcile.keys import KeyCheck

    plain = _report()
    assert "tombstones" not in render_text(plain)  # no marker declared: nothing shown
    units = list(plain.slices)
    units[0] = replace(units[0], tombstones=4)
    units[61] = replace(units[61], tombstones=3)
    keys = KeyCheck("table", ("order_id",), rows=500, deleted=6)
    report = replace(plain, slices=tuple(units), keys=keys)
    totals = json.loads(render_json(report))["totals"]
    assert (totals["tombstones"], totals["deleted_keys"], totals["duplicate_keys"]) == (7, 6, 0)
    assert json.loads(render_json(report))["keys"]["deleted"] == 6
    phrase = "tombstones 7 (deleted keys 6)"
    assert phrase in render_text(report) and phrase in render_html(report)
