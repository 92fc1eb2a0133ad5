"""Text summaries that scale: problems first, bounded rows, humanised sizes and durations."""

from __future__ import annotations

from typing import Any

from coordinator.run.summary import counts_text, pick_slices, plan_totals, remaining_estimate


def _slice(i: int, status: str, **kw: Any) -> dict[str, Any]:
    return {"slice_id": f"s{i:05d}", "status": status, "attempts": 1, "rows": None,
            "est_rows": 100, "duration_s": None, **kw}  # fmt: skip


def test_ten_thousand_slices_print_twenty_rows_problems_first() -> None:
    slices = [_slice(i, "committed") for i in range(10_000)]
    slices[7_000] = _slice(7_000, "failed", attempts=5)
    slices[9_999] = _slice(9_999, "running")
    shown, more = pick_slices(slices, "summary")
    assert len(shown) == 20 and more == 9_980
    assert [s["slice_id"] for s in shown[:2]] == ["s07000", "s09999"]
    assert all(s["status"] == "committed" for s in shown[2:])
    assert pick_slices(slices, "failed") == ([slices[7_000]], 0)
    assert len(pick_slices(slices, "all")[0]) == 10_000


def test_counts_read_problems_first_not_as_a_dict() -> None:
    assert counts_text({"committed": 5, "failed": 1, "pending": 1200}) == (
        "failed=1 pending=1,200 committed=5"
    )
    assert counts_text({}) == "no slices"


def test_the_time_left_follows_the_pace_of_committed_slices() -> None:
    done = [_slice(i, "committed", rows=1000, duration_s=2.0) for i in range(4)]  # 500 rows/s
    left = [_slice(10 + i, "pending", est_rows=5000) for i in range(3)]  # 15,000 rows
    assert remaining_estimate(done + left, concurrency=2) == 15.0
    assert remaining_estimate(left, concurrency=2) is None  # no pace yet
    assert remaining_estimate(done, concurrency=2) == 0.0


def test_plan_totals_per_kind() -> None:
    slices = [{"kind": "archive", "est_rows": 10, "est_bytes": 2048},
              {"kind": "kafka", "est_rows": 5, "est_bytes": 100},
              {"kind": "archive", "est_rows": 1, "est_bytes": 1}]  # fmt: skip
    assert plan_totals(slices) == [("archive", 2, 11, 2049), ("kafka", 1, 5, 100)]
