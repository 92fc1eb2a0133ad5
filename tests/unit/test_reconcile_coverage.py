"""Coverage core: sparse offsets, each corruption kind counted separately."""

from __future__ import annotations

from typing import Any, NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.coverage import compare_offsets


class Kw(NamedTuple):
    log_start: int
    hwm: int
    end: int
    source: list[int]

    def asdict(self) -> dict[str, Any]:
        return self._asdict()


@st.composite
def partitions(draw: st.DrawFn) -> tuple[list[int], int, int, int]:
    """Sparse source offsets (markers/aborted records leave holes), log_start, hwm, end."""
    log_start = draw(st.integers(0, 50))
    end = log_start + draw(st.integers(4, 200))
    hwm = draw(st.integers(log_start + 1, end - 1))
    src = sorted(draw(st.sets(st.integers(log_start, end - 1), min_size=3)))
    return src, log_start, hwm, end


def _clean(src: list[int], hwm: int) -> tuple[list[int], list[bool]]:
    return list(src), [o >= hwm for o in src]


@settings(max_examples=100, deadline=None)
@given(p=partitions())
def test_clean_sparse_partition_has_zero_counts(p: tuple[list[int], int, int, int]) -> None:
    src, log_start, hwm, end = p
    offs, live = _clean(src, hwm)
    cov = compare_offsets(
        0, log_start=log_start, hwm=hwm, end=end, source=src, table_offsets=offs, table_live=live
    )
    assert cov.ok and cov.source_records == len(src) == cov.table_rows
    assert (cov.lost, cov.phantom, cov.duplicated, cov.overlap, cov.gap) == (0, 0, 0, 0, 0)


@settings(max_examples=100, deadline=None)
@given(p=partitions(), data=st.data())
def test_each_corruption_is_counted_as_its_kind(
    p: tuple[list[int], int, int, int], data: st.DataObject
) -> None:
    src, log_start, hwm, end = p
    o = data.draw(st.sampled_from(src))
    kw = Kw(log_start, hwm, end, src)
    offs, live = _clean(src, hwm)
    i = offs.index(o)

    lost = compare_offsets(
        0,
        table_offsets=offs[:i] + offs[i + 1 :],
        table_live=live[:i] + live[i + 1 :],
        **kw.asdict(),
    )
    assert (lost.lost, lost.samples["lost"], lost.phantom) == (1, (o,), 0)

    quarantined = compare_offsets(
        0,
        table_offsets=offs[:i] + offs[i + 1 :],
        table_live=live[:i] + live[i + 1 :],
        quarantine=[o],
        **kw.asdict(),
    )
    assert quarantined.ok and quarantined.quarantined == 1

    dup = compare_offsets(0, table_offsets=[*offs, o], table_live=[*live, live[i]], **kw.asdict())
    assert (dup.duplicated, dup.overlap, dup.lost) == (1, 0, 0)

    both = compare_offsets(
        0, table_offsets=[*offs, o], table_live=[*live, not live[i]], **kw.asdict()
    )
    assert (both.overlap, both.duplicated, both.wrong_side) == (1, 0, 1)

    holes = sorted(set(range(log_start, end)) - set(src))
    if holes:
        h = data.draw(st.sampled_from(holes))
        ph = compare_offsets(
            0, table_offsets=[*offs, h], table_live=[*live, h >= hwm], **kw.asdict()
        )
        assert (ph.phantom, ph.samples["phantom"], ph.lost) == (1, (h,), 0)


def test_gap_is_the_lost_records_at_the_seam() -> None:
    src = [0, 1, 2, 4, 5, 7, 8, 9]  # 3 and 6 are transaction markers
    kw = Kw(0, 5, 10, src)
    table = [0, 1, 2, 5, 7, 8, 9]  # offset 4, the last record below the cut, is missing
    cov = compare_offsets(0, table_offsets=table, table_live=[o >= 5 for o in table], **kw.asdict())
    assert (cov.lost, cov.gap, cov.samples["gap"]) == (1, 1, (4,))
    table = [0, 2, 4, 5, 7, 8, 9]  # offset 1 lost in the middle of history: lost, not gap
    cov = compare_offsets(0, table_offsets=table, table_live=[o >= 5 for o in table], **kw.asdict())
    assert (cov.lost, cov.gap) == (1, 0)


def test_rows_in_flight_beyond_end_are_not_compared() -> None:
    cov = compare_offsets(
        0,
        log_start=0,
        hwm=2,
        end=4,
        source=[0, 1, 2, 3, 4, 5],
        table_offsets=[0, 1, 2, 3, 4, 5, 6],
        table_live=[False, False] + [True] * 5,
    )
    assert cov.ok and cov.table_rows == 4 and cov.source_records == 4
    assert cov.to_json()["ok"] is True


@settings(max_examples=100, deadline=None)
@given(p=partitions(), data=st.data())
def test_missing_records_split_into_lost_and_in_flight_at_the_live_position(
    p: tuple[list[int], int, int, int], data: st.DataObject
) -> None:
    """Every missing record is counted exactly once: lost below the live side's position,
    in flight at or above it; both fail (nothing is hidden without --min-age)."""
    src, log_start, hwm, end = p
    position = data.draw(st.integers(hwm, end))
    written = [o for o in src if o < position and data.draw(st.booleans())]
    cov = compare_offsets(
        0, log_start=log_start, hwm=hwm, end=end, source=src,
        table_offsets=written, table_live=[o >= hwm for o in written], live_position=position,
    )  # fmt: skip
    missing = sorted(set(src) - set(written))
    assert cov.lost == len([o for o in missing if o < position])
    assert cov.in_flight == len([o for o in missing if o >= position])
    assert cov.lost + cov.in_flight == len(missing)
    assert cov.ok == (not missing)
    assert cov.gap <= cov.lost


def test_superseded_offsets_are_neither_lost_nor_in_flight() -> None:
    cov = compare_offsets(
        0, log_start=0, hwm=5, end=8, source=list(range(8)),
        table_offsets=[0, 1, 3, 4, 5, 6], table_live=[False] * 4 + [True] * 2,
        superseded=[2], quarantine=[7], live_position=8, left_out=3,
    )  # fmt: skip
    assert cov.ok, cov.to_json()
    assert (cov.superseded, cov.quarantined, cov.lost, cov.in_flight) == (1, 1, 0, 0)
    assert cov.to_json()["left_out"] == 3 and cov.samples["superseded"] == (2,)
    nothing_live = compare_offsets(
        0, log_start=0, hwm=5, end=8, source=list(range(8)),
        table_offsets=[0, 1, 2, 3, 4], table_live=[False] * 5, live_position=5,
    )  # fmt: skip
    assert (nothing_live.in_flight, nothing_live.lost, nothing_live.gap) == (3, 0, 0)
