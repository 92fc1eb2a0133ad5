"""Issue 11 item 3: bad rows of a CSV archive are quarantined, not fatal, on Iceberg and Lance.

``seamline run`` on a job whose monthly CSV archive holds good rows and bad ones (a number
that is not one, an empty required field, a timestamp in year 10000, an empty event time):
the run exits 0 and reconciles counting them, the table (read directly) holds exactly the
good rows with their values, and every bad row is in the archive quarantine once with its
file, row, line and reason. On Lance also: ``seamline reconcile`` counts them per slice, and
a reprocess of the month (the slice re-run) leaves the same entries, not a second copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backfill.archive_quarantine import quarantine_dir
from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import load_job
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import seamline, table_rows

pytestmark = pytest.mark.integration

MARCH = """order_id,customer,amount,ts
1,alice,12.5,2024-03-01T10:00:00Z
2,bob,not-a-number,2024-03-02T10:00:00Z
,carol,3.0,2024-03-03T10:00:00Z
4,"dave
on two lines",4.25,2024-03-04T10:00:00Z
5,erin,5.0,10000-03-05T10:00:00Z

6,frank,6.0,2024-03-06T10:00:00Z
"""
APRIL = """order_id,customer,amount,ts
7,grace,7.0,2024-04-01T10:00:00Z
8,heidi,8.0,
9,ivan,9.5,2024-04-09T10:00:00Z
"""
GOOD = {1: ("alice", 12.5), 4: ("dave\non two lines", 4.25), 6: ("frank", 6.0),
        7: ("grace", 7.0), 9: ("ivan", 9.5)}  # fmt: skip
#: (file, row, line, start of the reason) of every bad row
BAD = [
    ("2024-03.csv", 2, 3, "field 'amount': CSV conversion error to double"),
    ("2024-03.csv", 3, 4, "field 'order_id': required field is empty or null"),
    ("2024-03.csv", 5, 7, "field 'ts': CSV conversion error to timestamp"),
    ("2024-04.csv", 2, 3, "field 'ts': required field is empty or null"),
]


def _job(root: Path, fmt: str, bootstrap: str, topic: str) -> Path:
    if fmt == "iceberg":
        (root / "warehouse").mkdir()
        table = (f'format = "iceberg"\nidentifier = "aq.orders"\n'
                 f'catalog_uri = "sqlite:///{root}/catalog.db"\nwarehouse = "{root}/warehouse"')
    else:
        table = 'format = "lance"\nuri = "orders.lance"'
    (root / "archive").mkdir()
    (root / "archive" / "2024-03.csv").write_text(MARCH, encoding="utf-8")
    (root / "archive" / "2024-04.csv").write_text(APRIL, encoding="utf-8")
    path = root / "job.toml"
    path.write_text(
        f"""[job]
id = "aq"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
[schema]
event_time = "ts"
required = ["order_id"]
[schema.fields]
order_id = "int64"
customer = "string"
amount = "float64"
ts = "timestamp_us"
[table]
{table}
[history]
kafka = true
[[history.archive]]
glob = "archive/*.csv"
format = "csv"
bucket = "month"
[backfill]
concurrency = 1
max_attempts = 3
[state]
url = "sqlite:///{root}/state.db"
""",
        encoding="utf-8",
    )
    return path


def _quarantined(root: Path) -> list[dict[str, Any]]:
    folder = quarantine_dir(load_job(root / "job.toml"))
    return [json.loads(line) for p in sorted(folder.glob("*.jsonl"))
            for line in p.read_text(encoding="utf-8").splitlines()]  # fmt: skip


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_csv_archive_bad_rows_are_quarantined_and_counted(
    tmp_path: Path, fmt: str, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    path = _job(tmp_path, fmt, kafka_bootstrap, kafka_topic(1))
    res = seamline("run", str(path), "--output", "json")
    assert res.returncode == ExitCode.OK, res.stderr[-3000:]
    run = json.loads(res.stdout)
    assert run["reconciled"] is True, res.stdout
    assert run["reconcile"]["archive_quarantined"] == len(BAD), run

    rows = table_rows(load_job(path))  # the table itself, not our reconciler
    got = {r["order_id"]: (r["customer"], r["amount"]) for r in rows.to_pylist()}
    assert got == GOOD and rows.num_rows == len(GOOD)

    entries = _quarantined(tmp_path)
    assert [(e["file"].split("/")[-1], e["row"], e["line"]) for e in entries] == [
        b[:3] for b in BAD
    ]
    for e, (_, _, _, reason) in zip(entries, BAD, strict=True):
        assert e["error"].startswith(reason), e
    assert entries[0]["raw"] == "2,bob,not-a-number,2024-03-02T10:00:00Z"
    assert {e["slice_id"] for e in entries} == {"a-month-202403", "a-month-202404"}

    if fmt == "iceberg":
        return  # the per-slice counts and the re-run are format-neutral: checked once, on Lance
    rec = seamline("reconcile", str(path), "--output", "json")
    assert rec.returncode == ExitCode.OK, rec.stderr[-3000:]
    doc = json.loads(rec.stdout)
    per_slice = {s["slice_id"]: s["quarantined"] for s in doc["slices"] if s["kind"] == "archive"}
    assert per_slice == {"a-month-202403": 3, "a-month-202404": 1}
    assert doc["totals"]["archive_quarantined"] == len(BAD)
    assert {s["slice_id"]: s["source"]["rows"] for s in doc["slices"]
            if s["kind"] == "archive"} == {"a-month-202403": 3, "a-month-202404": 2}  # fmt: skip

    again = seamline("reprocess", str(path), "--from", "2024-03-01", "--to", "2024-04-01")
    assert again.returncode == ExitCode.OK, again.stderr[-3000:]
    redone = _quarantined(tmp_path)  # the re-run replaced its bucket's entries, no second copy
    assert [{k: v for k, v in e.items() if k != "slice_id"} for e in redone] == [
        {k: v for k, v in e.items() if k != "slice_id"} for e in entries
    ]
    assert table_rows(load_job(path)).num_rows == len(GOOD)
