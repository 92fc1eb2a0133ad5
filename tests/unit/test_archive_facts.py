"""Archive planning facts: Parquet footer statistics answer exactly what a full scan would."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coordinator.core.jobspec import ArchiveSpec
from coordinator.plan import facts
from coordinator.plan.facts import scan_file

PARQUET = ArchiveSpec(glob="*.parquet", format="parquet")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
T1 = datetime(2024, 3, 31, 23, 59, 59, tzinfo=UTC)


def _write(path: Path, values: pa.Array, row_group_size: int = 2) -> Path:
    pq.write_table(pa.table({"ts": values, "x": list(range(len(values)))}), path,
                   row_group_size=row_group_size)
    return path


def _scanned(path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """The same file's facts with the footer path disabled (the reference)."""
    with monkeypatch.context() as m:
        m.setattr(facts, "_footer_facts", lambda *_: (False, None))
        return scan_file(path, PARQUET, "ts")


@pytest.mark.parametrize(
    "values",
    [
        pa.array([T1, None, T0, datetime(2024, 2, 1, tzinfo=UTC), None], pa.timestamp("ms")),
        pa.array([T0, T1, None], pa.timestamp("us", tz="UTC")),
        pa.array([int(T1.timestamp() * 1000), int(T0.timestamp() * 1000)], pa.int64()),
        pa.array([date(2024, 3, 31), None, date(2024, 1, 1)], pa.date32()),
    ],
    ids=["timestamp-ms-naive", "timestamp-us-utc", "int64-epoch-ms", "date32"],
)
def test_footer_statistics_equal_a_full_scan(
    tmp_path: Path, values: pa.Array, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "f.parquet", values)
    answered, found = facts._footer_facts(path, "ts")
    assert answered, "typed event-time column with statistics must answer from the footer"
    assert found == _scanned(path, monkeypatch)
    assert found is not None and found.rows == len(values)
    assert found.min_time == T0


def test_string_event_times_are_scanned_not_read_from_statistics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lexicographic order of strings is not time order in general: never trust it
    path = _write(tmp_path / "s.parquet", pa.array(["2024-03-31T00:00:00", "2024-01-01T00:00:00"]))
    assert facts._footer_facts(path, "ts") == (False, None)
    found = scan_file(path, PARQUET, "ts")
    assert found is not None and found == _scanned(path, monkeypatch)
    assert found.min_time == T0


def test_all_null_and_empty_files_have_no_facts(tmp_path: Path) -> None:
    nulls = _write(tmp_path / "n.parquet", pa.array([None, None, None], pa.timestamp("ms")))
    assert facts._footer_facts(nulls, "ts") == (True, None)
    assert scan_file(nulls, PARQUET, "ts") is None
    empty = _write(tmp_path / "e.parquet", pa.array([], pa.timestamp("ms")))
    assert scan_file(empty, PARQUET, "ts") is None


def test_file_without_statistics_falls_back_to_the_scan(tmp_path: Path) -> None:
    path = tmp_path / "nostats.parquet"
    pq.write_table(pa.table({"ts": pa.array([T1, T0], pa.timestamp("ms"))}), path,
                   write_statistics=False)
    assert facts._footer_facts(path, "ts") == (False, None)
    found = scan_file(path, PARQUET, "ts")
    assert found is not None and (found.min_time, found.max_time) == (T0, T1)
