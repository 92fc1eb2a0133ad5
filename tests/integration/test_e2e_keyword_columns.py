"""``seamline run`` on a Lance job whose event-time column is named like a SQL keyword (issue 12
item 1, the reported repro): monthly archive files for 2024-01, 2024-02 and the current month,
concurrency 1. The run must reconcile, a reprocess of February must replace (not duplicate) it,
and the dataset must hold every archive row once."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import seamline

pytestmark = pytest.mark.integration

ROWS = 6  # per month


def _job(root: Path, column: str, bootstrap: str, topic: str) -> Path:
    path = root / "job.toml"
    path.write_text(
        f"""[job]
id = "kw"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
[schema]
event_time = "{column}"
[schema.fields]
order_id = "int64"
{column} = "timestamp_ms"
amount = "float64"
[table]
format = "lance"
uri = "orders.lance"
[history]
kafka = true
[[history.archive]]
glob = "archive/*.parquet"
format = "parquet"
bucket = "month"
[backfill]
concurrency = 1
max_attempts = 2
[state]
url = "sqlite:///{root}/state.db"
""",
        encoding="utf-8",
    )
    return path


def _months() -> list[datetime]:
    now = datetime.now(UTC)
    this = datetime(now.year, now.month, 1, tzinfo=UTC)
    return [datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC), this]


def _archive(root: Path, column: str) -> None:
    (root / "archive").mkdir()
    for i, start in enumerate(_months()):
        table = pa.table(
            {
                "order_id": pa.array(range(100 * i, 100 * i + ROWS), pa.int64()),
                column: pa.array(
                    [start + timedelta(minutes=m) for m in range(ROWS)], pa.timestamp("ms", "UTC")
                ),
                "amount": pa.array([1.5] * ROWS, pa.float64()),
            }
        )
        pq.write_table(table, root / "archive" / f"{start:%Y-%m}.parquet")


@pytest.mark.parametrize("column", ["current_timestamp", "null"])
def test_run_with_a_keyword_event_time_keeps_every_month(
    tmp_path: Path, column: str, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    _archive(tmp_path, column)
    job = _job(tmp_path, column, kafka_bootstrap, kafka_topic(1))
    res = seamline("run", str(job), "--output", "json")
    assert res.returncode == ExitCode.OK, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["reconciled"] is True, doc
    # re-deriving February (a reprocess overwrites its archive scope) must not duplicate it
    again = seamline("reprocess", str(job), "--from", "2024-02-01", "--to", "2024-03-01")
    assert again.returncode == ExitCode.OK, again.stderr[-3000:]
    data = lance.dataset(str(tmp_path / "orders.lance")).to_table()
    months = Counter((t.year, t.month) for t in data[column].to_pylist())
    assert months == Counter({(m.year, m.month): ROWS for m in _months()})
    assert sorted(data["order_id"].to_pylist()) == [
        100 * i + r for i in range(3) for r in range(ROWS)
    ]
