"""Lance scope predicates on real datasets with keyword-named and mixed-case columns (issue 12
item 1): replacing one month's archive scope leaves every other month intact, in overwrite and
merge mode, checked by reading the dataset itself."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from backfill.sinks.lance.sink import LanceSink
from coordinator.core.values import CommitToken, Epoch, Scope, TimeBucket
from stream.decode.base import add_lineage

pytestmark = pytest.mark.integration

NAMES = ["current_timestamp", "null", "date", "true", "false", "interval", "exists", "all"]
NAMES += ["any", "current_date", "MixedCase", 'say "hi"', "it's"]


def _months() -> list[TimeBucket]:
    """2024-01, 2024-02 and the current month (a bucket holding "now")."""
    now = datetime.now(UTC)
    this = datetime(now.year, now.month, 1, tzinfo=UTC)
    nxt = datetime(this.year + this.month // 12, this.month % 12 + 1, 1, tzinfo=UTC)
    jan, feb, mar = (datetime(2024, m, 1, tzinfo=UTC) for m in (1, 2, 3))
    return [TimeBucket(jan, feb), TimeBucket(feb, mar), TimeBucket(this, nxt)]


def _rows(time_col: str, key_col: str, bucket: TimeBucket, base: int, n: int) -> pa.Table:
    """``n`` archive rows inside ``bucket``, keys ``base .. base+n-1``, amount = ``base``."""
    user = pa.table(
        {
            key_col: pa.array(range(base, base + n), pa.int64()),
            "amount": pa.array([float(base)] * n, pa.float64()),
            time_col: pa.array(
                [bucket.start + timedelta(hours=i) for i in range(n)], pa.timestamp("ms", "UTC")
            ),
        }
    )
    return add_lineage(user, None, None, "archive", "backfill")


def _sink(tmp_path: Path, time_col: str, key_col: str, mode: str) -> LanceSink:
    schema = pa.schema(
        [
            pa.field(key_col, pa.int64(), nullable=False),
            pa.field("amount", pa.float64()),
            pa.field(time_col, pa.timestamp("ms", "UTC"), nullable=False),
        ]
    )
    key = [key_col] if mode == "merge" else []
    sink = LanceSink(str(tmp_path / "t.lance"), schema, time_col, mode=mode, key=key)  # type: ignore[arg-type]
    sink.ensure_table()
    return sink


def _tok(i: int, attempt: int = 1) -> CommitToken:
    return CommitToken("kw", f"m-{i}", attempt, Epoch(1), "backfill")


def _by_month(uri: str, time_col: str, key_col: str) -> dict[tuple[int, int], Counter[int]]:
    """Read the dataset itself: per (year, month) the count of each key."""
    table = lance.dataset(uri).to_table()
    out: dict[tuple[int, int], Counter[int]] = {}
    for row in table.select([time_col, key_col]).to_pylist():
        ts = row[time_col]
        out.setdefault((ts.year, ts.month), Counter())[row[key_col]] += 1
    return out


def _month(b: TimeBucket) -> tuple[int, int]:
    return (b.start.year, b.start.month)


@pytest.mark.parametrize("mode", ["overwrite", "merge"])
@pytest.mark.parametrize("time_col", NAMES)
def test_replacing_one_month_keeps_every_other_month(
    tmp_path: Path, time_col: str, mode: str
) -> None:
    key_col = "all" if time_col != "all" else "any"  # a keyword-named key column too
    sink = _sink(tmp_path, time_col, key_col, mode)
    months = _months()
    for i, b in enumerate(months):
        sink.write_slice(
            Scope("archive", bucket=b), _rows(time_col, key_col, b, 100 * i, 5), _tok(i)
        )
    # re-derive February with fewer, changed rows, then re-run the current month as is
    feb, this = months[1], months[2]
    sink.write_slice(
        Scope("archive", bucket=feb), _rows(time_col, key_col, feb, 100, 3), _tok(1, 2)
    )
    sink.write_slice(
        Scope("archive", bucket=this), _rows(time_col, key_col, this, 200, 5), _tok(2, 2)
    )

    got = _by_month(sink.uri, time_col, key_col)
    assert got == {
        _month(months[0]): Counter(range(0, 5)),
        _month(feb): Counter(range(100, 103)),
        _month(this): Counter(range(200, 205)),
    }
    assert lance.dataset(sink.uri).count_rows() == 13
    found = sink.find_commit("kw", "m-1")
    assert found is not None and found.token.attempt == 2
