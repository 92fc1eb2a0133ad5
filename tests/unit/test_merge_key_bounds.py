"""The Iceberg merge planner's file pruning: a data file is a candidate exactly when one of the
batch's keys lies within its key statistics, whatever the order and repeats of the keys."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from backfill.sinks.iceberg.merge import range_holds, sorted_keys

keys_st = st.lists(st.integers(-50, 50), max_size=40)


@given(keys=keys_st, lo=st.integers(-60, 60), width=st.integers(0, 30))
def test_a_file_is_a_candidate_exactly_when_a_key_lies_in_its_bounds(
    keys: list[int], lo: int, width: int
) -> None:
    hi = lo + width
    arr = np.array(keys, dtype=np.int64)
    assert range_holds(lo, hi, sorted_keys(arr)) == any(lo <= k <= hi for k in keys)


@given(keys=keys_st)
def test_sorted_keys_orders_any_batch_and_keeps_every_key(keys: list[int]) -> None:
    arr = np.array(keys, dtype=np.int64)
    out = sorted_keys(arr)
    assert out.tolist() == sorted(keys)


def test_an_ordered_batch_is_searched_as_it_is_without_a_copy() -> None:
    arr = np.array([1, 1, 2, 5, 9], dtype=np.int64)
    assert sorted_keys(arr) is arr
