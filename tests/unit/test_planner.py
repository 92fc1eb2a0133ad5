"""Planner properties: Kafka slices and archive buckets tile their ranges exactly once, the plan
is deterministic, retention loss is named."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.errors import SourceDataLossError
from coordinator.core.values import Cut, Epoch, Offset, PartitionCut, PartitionId, Slice
from coordinator.plan.planner import (
    ArchiveFile,
    BucketUnit,
    archive_slices,
    check_retention,
    floor_time,
    kafka_slices,
    lost_ranges,
    make_plan,
    time_buckets,
    with_estimates,
)

T0 = datetime(2020, 1, 1, tzinfo=UTC)
UNITS: list[BucketUnit] = ["hour", "day", "month"]
MAX_SLICES = 2_000  # unit-tier plans stay small; huge plans are measured in bench/planner.py
MAX_PARTITIONS = 8


def bounded_size(parts: tuple[PartitionCut, ...], size: int) -> int:
    """``size`` raised just enough that ``parts`` split into at most ``MAX_SLICES`` (+ one
    rounding slice per partition): examples stay fast whatever widths were drawn."""
    total = sum(p.hwm - p.log_start for p in parts)
    return max(size, total // MAX_SLICES + 1)


@st.composite
def partition_cuts(draw: st.DrawFn) -> tuple[PartitionCut, ...]:
    n = draw(st.integers(0, MAX_PARTITIONS))
    out = []
    for p in range(n):
        start = draw(st.integers(0, 10**12))
        width = draw(st.one_of(st.integers(0, 50), st.integers(0, 10**6)))
        out.append(PartitionCut(PartitionId(p), Offset(start), Offset(start + width)))
    return tuple(out)


def _cut(parts: tuple[PartitionCut, ...], job: str = "j") -> Cut:
    return Cut(job, "orders", parts, T0, Epoch(1))


@given(partition_cuts(), st.integers(1, 10**6))
def test_kafka_slices_tile_every_partition_exactly_once(
    parts: tuple[PartitionCut, ...], size: int
) -> None:
    size = bounded_size(parts, size)
    slices = kafka_slices(parts, size)
    assert len(slices) <= MAX_SLICES + MAX_PARTITIONS
    assert len({s.slice_id for s in slices}) == len(slices)
    for pc in parts:
        ranges = [r for s in slices for r in s.scope.ranges if r.partition == pc.partition]
        if pc.hwm == pc.log_start:
            assert ranges == []
            continue
        assert ranges[0].start == pc.log_start and ranges[-1].end == pc.hwm
        for a, b in itertools.pairwise(ranges):
            assert a.end == b.start  # contiguous, hence no gap and no overlap
        assert all(0 < r.width <= size for r in ranges)
        assert sum(r.width for r in ranges) == pc.hwm - pc.log_start
    assert sum(s.est_rows for s in slices) == sum(p.hwm - p.log_start for p in parts)


@given(partition_cuts(), st.integers(1, 50))
def test_kafka_slices_cover_each_offset_once_small(
    parts: tuple[PartitionCut, ...], size: int
) -> None:
    small = tuple(
        PartitionCut(p.partition, p.log_start, Offset(p.log_start + (p.hwm - p.log_start) % 200))
        for p in parts
    )
    seen: dict[tuple[int, int], int] = {}
    for s in kafka_slices(small, size):
        for r in s.scope.ranges:
            for o in range(r.start, r.end):
                seen[(r.partition, o)] = seen.get((r.partition, o), 0) + 1
    expected = {(p.partition, o) for p in small for o in range(p.log_start, p.hwm)}
    assert set(seen) == expected and set(seen.values()) <= {1}


times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


@given(times, st.integers(0, 3 * 24 * 3600 * 400), st.sampled_from(UNITS))
def test_buckets_tile_the_time_range_exactly_once(
    first: datetime, span_s: int, unit: BucketUnit
) -> None:
    last = first + timedelta(seconds=span_s)
    if unit == "hour":
        last = first + timedelta(seconds=span_s % (3600 * 24 * 20))
    buckets = time_buckets(first, last, unit)
    assert buckets[0].start == floor_time(first, unit) <= first
    assert buckets[-1].start <= last < buckets[-1].end
    for a, b in itertools.pairwise(buckets):
        assert a.end == b.start
    for b in buckets:
        assert floor_time(b.start, unit) == b.start
        assert floor_time(b.end - timedelta(microseconds=1), unit) == b.start


def test_month_buckets_cross_the_year() -> None:
    buckets = time_buckets(
        datetime(2023, 12, 5, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC), "month"
    )
    assert [(b.start.month, b.end.month, b.end.year) for b in buckets] == [
        (12, 1, 2024),
        (1, 2, 2024),
    ]


@st.composite
def archive_files(draw: st.DrawFn) -> list[ArchiveFile]:
    n = draw(st.integers(1, 6))
    out = []
    for i in range(n):
        start = T0 + timedelta(minutes=draw(st.integers(0, 60 * 24 * 90)))
        end = start + timedelta(minutes=draw(st.integers(0, 60 * 24 * 10)))
        rows = draw(st.integers(0, 10**6))
        out.append(ArchiveFile(f"f{i}.parquet", start, end, rows, rows * 40))
    return out


@given(archive_files(), st.sampled_from(UNITS))
def test_archive_slices_are_disjoint_and_cover_every_file(
    files: list[ArchiveFile], unit: BucketUnit
) -> None:
    slices = archive_slices(files, unit)
    buckets = [s.scope.bucket for s in slices]
    assert all(b is not None for b in buckets)
    spans = sorted((b.start, b.end) for b in buckets if b is not None)
    for a, b in itertools.pairwise(spans):
        assert a[1] <= b[0]
    for f in files:
        holding = [s for s in slices if f.path in s.files]
        assert holding, f"file {f.path} in no slice"
        starts = [s.scope.bucket.start for s in holding if s.scope.bucket]
        ends = [s.scope.bucket.end for s in holding if s.scope.bucket]
        assert min(starts) <= f.min_time and f.max_time < max(ends)
    total = sum(f.rows for f in files)
    assert abs(sum(s.est_rows for s in slices) - total) <= len(slices)


def test_archive_slice_ids_and_half_open_bounds() -> None:
    midnight = datetime(2024, 1, 2, tzinfo=UTC)
    files = [ArchiveFile("x.parquet", midnight - timedelta(hours=1), midnight, 10, 100)]
    slices = archive_slices(files, "day")
    assert [s.slice_id for s in slices] == ["a-day-20240101", "a-day-20240102"]
    hours = archive_slices(files, "hour")
    assert [s.slice_id for s in hours] == ["a-hour-2024010123", "a-hour-2024010200"]
    assert [s.slice_id for s in archive_slices(files, "month")] == ["a-month-202401"]


@given(partition_cuts(), st.integers(1, 10**5), archive_files(), st.randoms())
def test_plan_is_deterministic(
    parts: tuple[PartitionCut, ...], size: int, files: list[ArchiveFile], rnd: random.Random
) -> None:
    size = bounded_size(parts, size)
    one = make_plan(_cut(parts), size, files, "day")
    shuffled = list(files)
    rnd.shuffle(shuffled)
    two = make_plan(_cut(parts), size, shuffled, "day")
    assert one == two
    assert len(one.plan_hash) == 64
    assert len(one.slices) <= MAX_SLICES + MAX_PARTITIONS + 101  # + at most 101 day buckets
    estimated = with_estimates(one, {s.slice_id: (1, 2) for s in one.slices})
    assert estimated.plan_hash == one.plan_hash  # estimates never change what a slice owns


def test_bounded_size_keeps_the_issue_19_draw_small() -> None:
    # the draw that exceeded the deadline: one partition, 512 k offsets, slice size 1
    parts = (PartitionCut(PartitionId(0), Offset(13850515), Offset(14362321)),)
    size = bounded_size(parts, 1)
    assert size == 256
    assert len(kafka_slices(parts, size)) == 2_000
    assert bounded_size(parts, 10**6) == 10**6  # a large enough size is kept


def test_plan_hash_changes_with_the_cut_or_the_slicing() -> None:
    parts = (PartitionCut(PartitionId(0), Offset(0), Offset(100)),)
    base = make_plan(_cut(parts), 10).plan_hash
    assert make_plan(_cut(parts), 20).plan_hash != base
    moved = (PartitionCut(PartitionId(0), Offset(0), Offset(101)),)
    assert make_plan(_cut(moved), 10).plan_hash != base
    assert make_plan(_cut(parts, job="k"), 10).plan_hash != base


def test_retention_loss_names_partition_and_offsets() -> None:
    parts = (
        PartitionCut(PartitionId(0), Offset(0), Offset(100)),
        PartitionCut(PartitionId(1), Offset(0), Offset(100)),
    )
    cut = _cut(parts)
    slices = kafka_slices(parts, 40)
    check_retention(cut, slices, {PartitionId(0): Offset(0), PartitionId(1): Offset(0)})
    done = ["k-p1-000000000-000000040"]
    lost = {PartitionId(0): Offset(0), PartitionId(1): Offset(55)}
    assert [(r.partition, r.start, r.end) for r in lost_ranges(slices, lost, done)] == [(1, 40, 55)]
    with pytest.raises(SourceDataLossError, match=r"partition=1 offsets=\[40,55\)") as info:
        check_retention(cut, slices, lost, done)
    assert info.value.exit_code == 4
    assert "retention deleted 15 planned offsets" in str(info.value)


@given(st.integers(0, 300), st.integers(1, 60), st.sets(st.integers(0, 20)))
def test_lost_ranges_are_exactly_the_deleted_offsets_of_unfinished_slices(
    low: int, size: int, done_idx: set[int]
) -> None:
    parts = (PartitionCut(PartitionId(0), Offset(0), Offset(200)),)
    slices = kafka_slices(parts, size)
    done = [s.slice_id for i, s in enumerate(slices) if i in done_idx]
    lost = lost_ranges(slices, {PartitionId(0): Offset(low)}, done)
    got = {o for r in lost for o in range(r.start, r.end)}
    want = {
        o
        for s in slices
        if s.slice_id not in done
        for r in s.scope.ranges
        for o in range(r.start, r.end)
        if o < low
    }
    assert got == want


def test_empty_history_gives_an_empty_plan() -> None:
    plan = make_plan(_cut((PartitionCut(PartitionId(0), Offset(7), Offset(7)),)), 10)
    assert plan.slices == () and plan.est_rows == 0


def test_slices_keep_order_archive_then_kafka() -> None:
    files = [ArchiveFile("a.parquet", T0, T0 + timedelta(hours=1), 5, 50)]
    plan = make_plan(_cut((PartitionCut(PartitionId(0), Offset(0), Offset(3)),)), 2, files)
    assert [s.slice_id for s in plan.slices] == [
        "a-day-20200101",
        "k-p0-000000000-000000002",
        "k-p0-000000002-000000003",
    ]
    assert isinstance(plan.slices[0], Slice)
