"""The one-pass table scan's pure parts: grouping row hashes by unit with polars gives the very
checksum of each group, and rows are assigned to units exactly by half-open ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.values import Offset, OffsetRange, PartitionId, Scope, TimeBucket
from reconcile.checksum import checksum, row_hashes
from reconcile.tablepass import assign_offsets, grouped_checksums, scopes_disjoint

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@given(
    st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-1, 4)), max_size=200)
)
def test_grouped_checksums_equal_the_checksum_of_each_group(rows: list[tuple[int, int]]) -> None:
    table = pa.table({"v": pa.array([v for v, _ in rows], pa.int64())})
    unit = np.array([u for _, u in rows], dtype=np.int64)
    got = grouped_checksums(row_hashes(table), unit)
    for u in range(5):
        part = table.filter(pa.array(unit == u))
        assert got.get(u, checksum(part.slice(0, 0))) == checksum(part)
    assert -1 not in got


def test_grouped_sums_wrap_modulo_2_64() -> None:
    hashes = np.array([2**64 - 1, 2**64 - 1, 5], dtype=np.uint64)
    got = grouped_checksums(hashes, np.zeros(3, dtype=np.int64))[0]
    assert got.rows == 3 and got.sum == (2 * (2**64 - 1) + 5) % 2**64
    assert got.xor == 5


def test_assign_offsets_uses_half_open_ranges_and_leaves_gaps_unowned() -> None:
    offsets = np.array([0, 9, 10, 19, 20, 25, 30, 31], dtype=np.int64)
    got = assign_offsets(offsets, [(10, 20, 1), (0, 10, 0), (25, 30, 2)])
    assert got.tolist() == [0, 0, 1, 1, -1, 2, -1, -1]


def test_overlapping_scopes_are_detected() -> None:
    def kafka(a: int, b: int) -> Scope:
        return Scope("kafka", (OffsetRange(PartitionId(0), Offset(a), Offset(b)),))

    def day(d: int, n: int = 1) -> Scope:
        return Scope("archive", bucket=TimeBucket(T0 + timedelta(d), T0 + timedelta(d + n)))

    assert scopes_disjoint([kafka(0, 10), kafka(10, 20), day(0), day(1)])
    assert not scopes_disjoint([kafka(0, 10), kafka(5, 20)])
    assert not scopes_disjoint([day(0, 2), day(1)])
