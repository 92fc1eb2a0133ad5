"""Drill-down bisection names every injected difference."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.drilldown import KAFKA_KEY, bisect_diff

COLUMNS = ["_kafka_offset", "_kafka_partition", "v"]


def _kafka(offsets: list[int], values: list[int], partition: int = 0) -> pa.Table:
    return pa.table(
        {
            "_kafka_partition": pa.array([partition] * len(offsets), pa.int32()),
            "_kafka_offset": pa.array(offsets, pa.int64()),
            "v": pa.array(values, pa.int64()),
        }
    )


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 400),
    data=st.data(),
)
def test_bisection_finds_every_injected_difference(n: int, data: st.DataObject) -> None:
    offsets = sorted(data.draw(st.sets(st.integers(0, 5 * n), min_size=n, max_size=n)))
    values = list(range(n))
    k = data.draw(st.integers(0, min(n, 12)))
    touched = data.draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True))
    kinds = data.draw(st.lists(st.sampled_from(["drop", "dup", "flip"]), min_size=k, max_size=k))
    t_off, t_val = list(offsets), list(values)
    for i, kind in sorted(zip(touched, kinds, strict=True), reverse=True):
        if kind == "drop":
            del t_off[i], t_val[i]
        elif kind == "dup":
            t_off.append(offsets[i])
            t_val.append(values[i])
        else:
            t_val[i] = -1 - values[i]
    dd = bisect_diff(
        _kafka(offsets, values), _kafka(t_off, t_val), key=KAFKA_KEY, columns=COLUMNS, sample=50
    )
    assert dd.missing == kinds.count("drop")
    assert dd.extra == kinds.count("dup")
    assert dd.changed == kinds.count("flip")
    named = {(r.kind, r.where["_kafka_offset"]) for r in dd.rows}
    expected = {
        ({"drop": "missing", "dup": "extra", "flip": "changed"}[kind], offsets[i])
        for i, kind in zip(touched, kinds, strict=True)
    }
    assert named == expected
    if k == 0:
        assert dd.probes == 1


def test_business_key_bisection_names_swapped_values() -> None:
    src = pa.table({"id": [1, 2, 3, 4], "v": ["a", "b", "c", "d"]})
    tab = pa.table({"id": [4, 3, 2, 1], "v": ["d", "b", "c", "a"]})  # 2 and 3 swapped
    dd = bisect_diff(src, tab, key=["id"], columns=["id", "v"], leaf_rows=1)
    assert (dd.changed, dd.missing, dd.extra) == (2, 0, 0)
    assert sorted(r.where["id"] for r in dd.rows) == [2, 3]
    row = next(r for r in dd.rows if r.where["id"] == 2)
    assert row.source == {"id": 2, "v": "b"} and row.table == {"id": 2, "v": "c"}
    assert dd.to_json()["rows"][0]["kind"] == "changed"


def test_sample_is_bounded_but_counts_are_complete() -> None:
    src = _kafka(list(range(1000)), list(range(1000)))
    tab = _kafka(list(range(0, 1000, 2)), list(range(0, 1000, 2)))
    dd = bisect_diff(src, tab, key=KAFKA_KEY, columns=COLUMNS, sample=5)
    assert dd.missing == 500 and len(dd.rows) == 5 and dd.total == 500
