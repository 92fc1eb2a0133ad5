"""A new cut never puts ``hwm`` below the offsets the table already holds from live."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.values import Offset, PartitionCut, PartitionId
from coordinator.plan.cut import CutReading, floor_at_live


def reading(*hwms: int) -> CutReading:
    parts = tuple(PartitionCut(PartitionId(p), Offset(0), Offset(h)) for p, h in enumerate(hwms))
    return CutReading("t", parts, {}, datetime(2024, 1, 1, tzinfo=UTC), None)


def test_hwm_is_raised_to_the_table_live_offset_and_never_lowered() -> None:
    out = floor_at_live(reading(200, 100, 50), {PartitionId(0): Offset(150),
                                                PartitionId(1): Offset(130)})  # fmt: skip
    assert [(p.partition, p.log_start, p.hwm) for p in out.partitions] == [
        (0, 0, 200),  # the broker is ahead: the broker's hwm
        (1, 0, 130),  # live already wrote up to 130: the backfill must not own it
        (2, 0, 50),  # no live offset: unchanged
    ]


@settings(deadline=None)  # a shared 2-core machine: no timing in a property test
@given(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=6),
    st.dictionaries(st.integers(0, 7), st.integers(0, 10**6), max_size=8),
)
def test_floor_is_the_max_of_broker_and_live(hwms: list[int], live: dict[int, int]) -> None:
    offsets = {PartitionId(p): Offset(o) for p, o in live.items()}
    out = floor_at_live(reading(*hwms), offsets)
    for p, got in enumerate(out.partitions):
        assert got.hwm == max(hwms[p], live.get(p, 0)) and got.log_start == 0
