"""``seamline demo`` end to end, as a user runs it: a subprocess, real Kafka, Iceberg and Lance.

Each run is small (a few thousand history rows) but complete: archive + topic history under a
live producer and ``seamline live``, the backfill, catch-up, reconciliation and the report.
Afterwards no process the demo started may be left (``demo.json`` records their pids, and no
process may run from or name the workdir). One run uses a local broker the demo starts itself;
one is cancelled with SIGINT mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.core.errors import ExitCode
from coordinator.demo.live import POISON_AT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEAMLINE = str(Path(sys.executable).parent / "seamline")
ROWS = 4000
FAILING = ("lost", "duplicated", "phantom", "overlap", "gap", "wrong_side", "mismatched_slices")


def _demo_args(workdir: Path, fmt: str) -> list[str]:
    return [SEAMLINE, "demo", "--output", "json", "--rows", str(ROWS),
            "--workdir", str(workdir), "--table-format", fmt]  # fmt: skip


def _env(bootstrap: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    if bootstrap is None:
        env["SEAMLINE_KAFKA"] = "local"  # the demo starts (and must stop) its own broker
    else:
        env["KAFKA_BOOTSTRAP"] = bootstrap
    return env


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _processes_using(workdir: Path) -> list[str]:
    """Live processes whose command line names ``workdir`` or whose cwd lies in it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (str(workdir) in cmd or cwd.startswith(str(workdir))) and _alive(int(entry.name)):
            found.append(f"pid={entry.name} cwd={cwd} cmd={cmd[:120]}")
    return found


def _assert_nothing_left(workdir: Path) -> dict[str, Any]:
    pids = json.loads((workdir / "demo.json").read_text())
    for name in ("live_pid", "broker_pid"):
        pid = pids.get(name)
        assert pid is None or not _alive(pid), f"{name}={pid} still running"
    assert _processes_using(workdir) == []
    return dict(pids)


def _table_count(doc: dict[str, Any]) -> int:
    table = doc["table"]
    if table["format"] == "lance":
        import lance

        return int(lance.dataset(table["uri"]).count_rows())
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog(table["catalog_name"], uri=table["catalog_uri"],
                         warehouse=table["warehouse"])  # fmt: skip
    return int(catalog.load_table(table["identifier"]).scan().to_arrow().num_rows)


def _assert_reconciled(proc: subprocess.CompletedProcess[str], workdir: Path) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert doc["reconciled"] is True
    assert {k: doc[k] for k in FAILING} == dict.fromkeys(FAILING, 0)
    assert doc["quarantined"] == len(POISON_AT) == doc["malformed_records"]
    assert doc["source_records"] == ROWS + doc["live_records"]
    assert doc["table_rows"] == doc["source_records"] - doc["quarantined"]
    assert doc["table_rows"] == _table_count(doc)
    assert doc["late_events"] > 0
    assert doc["late_events_in_table"] == doc["late_events"]
    assert doc["archive_slices"] > 0 and doc["kafka_slices"] > 0
    assert doc["slices"] == doc["archive_slices"] + doc["kafka_slices"]
    assert doc["backfill_rows"] > ROWS  # live records produced before the cut are history
    assert doc["backfill_rows_per_s"] > 0 and doc["wall_seconds"] > 0
    html = Path(doc["html_report"])
    assert html.parent == workdir and "RECONCILED" in html.read_text()
    assert Path(doc["job_file"]) == workdir / "job.toml"
    return doc


def test_demo_on_iceberg_reconciles_and_stops_everything(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "demo-iceberg"
    proc = subprocess.run(_demo_args(workdir, "iceberg"), capture_output=True, text=True,
                          timeout=600, env=_env(kafka_bootstrap))  # fmt: skip
    doc = _assert_reconciled(proc, workdir)
    assert doc["table"]["identifier"] == "demo.orders"
    pids = _assert_nothing_left(workdir)
    assert pids["broker_kind"] == "env" and pids["live_pid"] > 0


def test_demo_with_slices_on_ray_reconciles(kafka_bootstrap: str, tmp_path: Path) -> None:
    """``seamline demo --executor ray``: the same demo, its backfill as tasks on a local Ray."""
    workdir = tmp_path / "demo-ray"
    proc = subprocess.run([*_demo_args(workdir, "iceberg"), "--executor", "ray"],
                          capture_output=True, text=True, timeout=600,
                          env=_env(kafka_bootstrap))  # fmt: skip
    doc = _assert_reconciled(proc, workdir)
    assert doc["executor"] == "ray"
    assert 'executor = "ray"' in (workdir / "job.toml").read_text()
    _assert_nothing_left(workdir)


def test_demo_on_lance_with_its_own_broker_detects_and_repairs_a_broken_week(
    tmp_path: Path,
) -> None:
    """One demo run (its own broker, ``--reprocess``) checks both: the Lance demo reconciles,
    stops everything and its next steps paste; the reprocess finds and repairs the broken
    week. (They were two demo runs of ~1 min each; the plain demo is run on Iceberg above.)"""
    workdir = tmp_path / "demo-lance"
    proc = subprocess.run([*_demo_args(workdir, "lance"), "--reprocess"], capture_output=True,
                          text=True, timeout=600, env=_env(None))  # fmt: skip
    doc = _assert_reconciled(proc, workdir)
    assert doc["table"] == {"format": "lance", "uri": str(workdir / "orders.lance")}
    _assert_repaired(doc)
    pids = _assert_nothing_left(workdir)
    assert pids["broker_kind"] == "local" and pids["broker_pid"] > 0
    _paste_next_steps(doc, workdir)


def _paste_next_steps(doc: dict[str, Any], workdir: Path) -> None:
    """The README's after-demo promise: the closing commands, pasted as printed, all work
    (the broker the demo stopped comes back on its recorded port, plan and reconcile pass)."""
    steps: list[str] = doc["next_steps"]
    job, broker = doc["job_file"], str(workdir / "broker")
    assert steps == [
        f"uv run seamline broker start --data-dir {broker}",
        f"uv run seamline status {job}",
        f"uv run seamline plan {job}",
        f"uv run seamline reconcile {job} --html {doc['html_report']}",
        f"uv run seamline broker stop --data-dir {broker}",
    ]
    try:
        for step in steps:
            args = step.split()
            assert args[:3] == ["uv", "run", "seamline"]
            res = subprocess.run([SEAMLINE, *args[3:]], capture_output=True, text=True,
                                 timeout=300, env=_env(None))  # fmt: skip
            assert res.returncode == 0, (step, res.stderr[-4000:])
            assert "librdkafka" not in res.stderr and "warning" not in res.stderr, res.stderr
            if args[3] == "reconcile":
                assert "reconciled" in res.stdout.lower(), res.stdout
    finally:
        subprocess.run([SEAMLINE, "broker", "stop", "--data-dir", broker], timeout=120)
    assert _processes_using(workdir) == []


def test_demo_cancelled_with_sigint_stops_everything(kafka_bootstrap: str, tmp_path: Path) -> None:
    workdir = tmp_path / "demo-cancel"
    proc = subprocess.Popen(_demo_args(workdir, "iceberg"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(kafka_bootstrap))  # fmt: skip
    deadline = time.monotonic() + 300
    pids: dict[str, Any] = {}
    while time.monotonic() < deadline and "live_pid" not in pids and proc.poll() is None:
        time.sleep(0.2)
        if (workdir / "demo.json").is_file():
            pids = json.loads((workdir / "demo.json").read_text() or "{}")
    assert "live_pid" in pids, proc.communicate()[1][-4000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == ExitCode.CANCELLED, err[-4000:]
    assert "cancelled" in err
    _assert_nothing_left(workdir)


def _assert_repaired(doc: dict[str, Any]) -> None:
    rep = doc["reprocess"]
    assert rep["ok"] is True and rep["detected"] is True and rep["repaired"] is True
    assert rep["rows_rewritten_by_bug"] > 0
    assert rep["repaired_rows"] == rep["rows_rewritten_by_bug"]
    # the broken week lies in the topic's history: only topic slices mismatch, and the
    # drill-down names every broken row
    assert rep["mismatched_slices"] and all(s.startswith("k-p") for s in rep["mismatched_slices"])
    assert rep["differing_rows"] == rep["rows_rewritten_by_bug"]
