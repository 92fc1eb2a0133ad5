"""Archive rows: a bad row is set aside with its file, row, line and reason, never fatal;
good rows convert exactly as they would in a clean file; exactly one slice owns a file's bad
rows; planning never crashes on an event time it cannot read."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.sources.archive import read_archive
from backfill.sources.archive_rows import read_file
from coordinator.core.errors import SourceError
from coordinator.core.jobspec import ArchiveSpec
from coordinator.core.values import Scope, Slice, SliceKey, TimeBucket
from coordinator.plan.facts import scan_file
from tests.contract.backfill_writers import make_job

SCHEMA = pa.schema(
    [
        pa.field("order_id", pa.int64(), nullable=False),
        pa.field("amount", pa.float64()),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)
DAY = datetime(2024, 3, 1, tzinfo=UTC)
GOOD_LINES = [f"{i},{i}.5,2024-03-0{1 + i % 2}T0{i % 10}:00:00Z" for i in range(8)]
BAD_LINES = ["x,1.0,2024-03-01T00:00:00Z", "9,not-a-number,2024-03-01T00:00:00Z",
             ",1.0,2024-03-01T00:00:00Z", "9,1.0,10000-01-01T00:00:00Z", "9,1.0,", "9,nan-x,"]  # fmt: skip


def _csv(path: Path, lines: list[str]) -> Path:
    path.write_text("order_id,amount,ts\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_bad_rows_are_named_and_the_rest_is_read(tmp_path: Path) -> None:
    lines = [GOOD_LINES[0], "1,not-a-number,2024-03-01T00:00:00Z", "", ",2,2024-03-01T00:00:00Z",
             '"3",4.0,"2024-03-01T00:00:00Z"']  # fmt: skip
    rows = read_file(_csv(tmp_path / "a.csv", lines), "csv", SCHEMA, "a.csv")
    assert rows.table["order_id"].to_pylist() == [0, 3]
    assert rows.rows.to_pylist() == [1, 4]
    assert [(b.file, b.row, b.line) for b in rows.bad] == [("a.csv", 2, 3), ("a.csv", 3, 5)]
    assert rows.bad[0].error == (
        "field 'amount': CSV conversion error to double: invalid value 'not-a-number'"
    )
    assert rows.bad[0].raw == "1,not-a-number,2024-03-01T00:00:00Z"
    assert rows.bad[1].error == "field 'order_id': required field is empty or null"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.integers(0, 5)), max_size=30))
def test_good_rows_read_as_in_a_clean_file(
    tmp_path_factory: pytest.TempPathFactory, picks: list[tuple[bool, int, int]]
) -> None:
    root = tmp_path_factory.mktemp("csv")
    lines = [GOOD_LINES[g] if good else BAD_LINES[b] for good, g, b in picks]
    clean = [GOOD_LINES[g] for good, g, _ in picks if good]
    mixed = read_file(_csv(root / "mixed.csv", lines), "csv", SCHEMA)
    ref = read_file(_csv(root / "clean.csv", clean), "csv", SCHEMA)
    assert mixed.table.equals(ref.table)
    assert [b.row for b in mixed.bad] == [i + 1 for i, (good, _, _) in enumerate(picks) if not good]


def test_jsonl_and_parquet_bad_rows(tmp_path: Path) -> None:
    docs = [{"order_id": 1, "ts": "2024-03-01T00:00:00Z"}, {"order_id": "one", "ts": "x"},
            {"order_id": 3, "amount": float("inf"), "ts": "2024-03-01T00:00:00Z"}]  # fmt: skip
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    rows = read_file(tmp_path / "a.jsonl", "jsonl", SCHEMA)
    assert rows.table["order_id"].to_pylist() == [1]
    assert [(b.row, b.line) for b in rows.bad] == [(2, 2), (3, 3)]
    assert rows.bad[1].error == "field 'amount': expected a finite number"

    big = 2**40
    pq.write_table(pa.table({"order_id": pa.array([1, big, None], pa.int64()),
                             "ts": pa.array([0, 1, 2], pa.timestamp("us", tz="UTC"))}),
                   tmp_path / "a.parquet")  # fmt: skip
    narrow = pa.schema([pa.field("order_id", pa.int32(), nullable=False), SCHEMA.field("ts")])
    rows = read_file(tmp_path / "a.parquet", "parquet", narrow)
    assert rows.table["order_id"].to_pylist() == [1]
    assert [b.row for b in rows.bad] == [2, 3]
    assert json.loads(rows.bad[0].raw)["order_id"] == big


def test_exactly_one_slice_owns_a_files_bad_rows(tmp_path: Path) -> None:
    job = make_job("lance-overwrite", tmp_path, "127.0.0.1:1", "t")
    _csv(tmp_path / "a.csv", ["1,1.0,", "2,2.0,2024-03-02T05:00:00Z", "3,x,2024-03-03T05:00:00Z",
                              "4,4.0,2024-03-01T05:00:00Z"])  # fmt: skip
    seen = []
    for d in range(3):
        bucket = TimeBucket(DAY + timedelta(days=d), DAY + timedelta(days=d + 1))
        got = read_archive(job, Slice(f"a{d}", Scope("archive", bucket=bucket), files=("a.csv",)))
        seen.append((got.rows["order_id"].to_pylist(), [b.row for b in got.bad]))
    # the file's earliest valid event time is day one: that slice owns both bad rows
    assert seen == [([4], [1, 3]), ([2], []), ([], [])]


def test_planning_skips_event_times_it_cannot_read(tmp_path: Path) -> None:
    spec = ArchiveSpec(glob="*", format="csv")
    _csv(tmp_path / "a.csv", ["1,1,10000-01-01T00:00:00Z", "2,2,not-a-time", "3,3,2024-03-01",
                              "4,4,2024-03-02T00:00:00Z"])  # fmt: skip
    found = scan_file(tmp_path / "a.csv", spec, "ts")
    assert found is not None and (found.min_time, found.max_time) == (DAY, DAY + timedelta(1))
    assert scan_file(_csv(tmp_path / "b.csv", ["1,1,never"]), spec, "ts") is None
    far = datetime(9999, 12, 31, tzinfo=UTC)
    stamps = pa.array([int(DAY.timestamp() * 1e6), int(far.timestamp() * 1e6) + 86_400_000_000 * 2],
                      pa.int64()).cast(pa.timestamp("us", tz="UTC"))  # fmt: skip
    pq.write_table(pa.table({"ts": stamps}), tmp_path / "c.parquet")
    found = scan_file(tmp_path / "c.parquet", ArchiveSpec(glob="*", format="parquet"), "ts")
    assert found is not None and (found.min_time, found.max_time) == (DAY, DAY)


def test_a_key_slice_owns_the_bad_rows_of_its_key_values(tmp_path: Path) -> None:
    job = make_job("lance-overwrite", tmp_path, "127.0.0.1:1", "t")
    _csv(tmp_path / "a.csv", ["1,1.0,", "2,2.0,2024-03-01T05:00:00Z", "3,x,2024-03-01T06:00:00Z",
                              "4,4.0,2024-03-01T07:00:00Z"])  # fmt: skip
    bucket = TimeBucket(DAY, DAY + timedelta(days=1))
    seen = []
    for values in [(1, 2), (3, 4)]:
        scope = Scope("archive", bucket=bucket, key=SliceKey("order_id", values))
        got = read_archive(job, Slice(f"k{values[0]}", scope, files=("a.csv",)))
        seen.append((got.rows["order_id"].to_pylist(), [b.row for b in got.bad]))
    # each bad row is quarantined once, by the slice of its own key value
    assert seen == [([2], [1]), ([4], [3])]


def test_a_bad_row_without_a_readable_key_fails_its_key_slice(tmp_path: Path) -> None:
    job = make_job("lance-overwrite", tmp_path, "127.0.0.1:1", "t")
    _csv(tmp_path / "a.csv", ["x,1.0,2024-03-01T05:00:00Z", "2,2.0,2024-03-01T05:00:00Z"])
    scope = Scope("archive", bucket=TimeBucket(DAY, DAY + timedelta(days=1)),
                  key=SliceKey("order_id", (2,)))  # fmt: skip
    with pytest.raises(SourceError, match=r"file=a\.csv row=1: expected a readable 'order_id'"):
        read_archive(job, Slice("k2", scope, files=("a.csv",)))


def test_nested_columns_from_jsonl_and_parquet_archives(tmp_path: Path) -> None:
    from decimal import Decimal

    import pyarrow.parquet as pq

    from backfill.sources.archive_rows import read_file
    from coordinator.core.fieldtypes import field_type

    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("items", field_type("list<struct<sku: string, qty: int32>>")),
            pa.field("prices", field_type("map<string, decimal(18,2)>")),
        ]
    )
    (tmp_path / "a.jsonl").write_text(
        '{"id":1,"items":[{"sku":"a","qty":1,"x":0}],"prices":{"eur":1.2}}\n'
        '{"id":2,"items":[{"qty":3000000000}]}\n'
        '{"id":3,"prices":{"eur":"0.10"}}\n'
    )
    got = read_file(tmp_path / "a.jsonl", "jsonl", schema, "a.jsonl")
    assert got.table.to_pylist() == [
        {"id": 1, "items": [{"sku": "a", "qty": 1}], "prices": [("eur", Decimal("1.20"))]},
        {"id": 3, "items": None, "prices": [("eur", Decimal("0.10"))]},
    ]
    assert [(b.row, b.error) for b in got.bad] == [
        (2, "field 'items': [0].qty: expected an integer in [-2147483648, 2147483647] "
            "(int32), found 3000000000")
    ]  # fmt: skip
    written = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "items": pa.array(
                [[{"sku": "a", "qty": 1}], [{"sku": "b", "qty": 2**40}]],
                field_type("list<struct<sku: string, qty: int64>>"),
            ),
        }
    )
    pq.write_table(written, tmp_path / "a.parquet")
    got = read_file(tmp_path / "a.parquet", "parquet", schema, "a.parquet")
    assert got.table.to_pylist() == [{"id": 1, "items": [{"sku": "a", "qty": 1}], "prices": None}]
    assert [b.row for b in got.bad] == [2]
