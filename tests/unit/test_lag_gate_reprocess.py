"""Pure parts of the lag gate and of reprocess planning (property tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.jobspec import parse_job
from coordinator.core.values import Cut, Epoch, Offset, PartitionCut, PartitionId
from coordinator.plan.planner import ArchiveFile
from coordinator.run.lag_gate import LagGate, lag_value, pause_for
from coordinator.run.reprocess import archive_reprocess_slices, kafka_reprocess_slices, run_id_of

JOB = parse_job(
    {
        "stream": {"bootstrap": "b:1", "topic": "t"},
        "schema": {"event_time": "ts", "fields": {"ts": "timestamp_ms"}},
        "table": {"format": "lance", "uri": "x.lance"},
        "backfill": {"lag_threshold": 10},
    },
    base_dir=Path("/tmp"),
    default_id="j",
)


@given(st.dictionaries(st.integers(0, 5), st.integers(0, 100)), st.integers(0, 200))
def test_pause_only_above_threshold(lags: dict[int, int], threshold: int) -> None:
    for metric in ("total", "max"):
        paused = pause_for(lags, threshold, 2.0, metric)  # type: ignore[arg-type]
        assert (paused == 2.0) == (lag_value(lags, metric) > threshold)  # type: ignore[arg-type]


def test_gate_pauses_caches_and_gives_up_after_max_wait() -> None:
    calls: list[int] = []
    now = [0.0]

    def measure() -> dict[int, int]:
        calls.append(1)
        return {0: 8, 1: 8}

    gate = LagGate(JOB, pause_s=1.0, measure=measure, max_wait_s=2.0, clock=lambda: now[0])
    assert gate() == 1.0 and gate() == 1.0  # total 16 > 10
    assert gate() is None  # 2 s of pauses spent: go on
    assert len(calls) == 3  # measured afresh after every pause
    max_gate = LagGate(JOB, metric="max", measure=measure, clock=lambda: now[0])
    assert max_gate() is None and max_gate() is None and len(calls) == 4  # cached


def test_gate_does_not_stop_a_run_when_lag_cannot_be_measured() -> None:
    def broken() -> dict[int, int]:
        raise RuntimeError("broker down")

    assert LagGate(JOB, measure=broken)() is None


def _cut(parts: list[tuple[int, int]]) -> Cut:
    pcs = tuple(
        PartitionCut(PartitionId(i), Offset(a), Offset(b)) for i, (a, b) in enumerate(parts)
    )
    return Cut("j", "t", pcs, datetime(2024, 1, 1, tzinfo=UTC), Epoch(1))


@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(-5, 120), st.integers(-5, 120)), min_size=4, max_size=4),
    st.integers(1, 30),
)
def test_kafka_reprocess_slices_stay_below_the_cut_and_tile_the_range(
    parts: list[tuple[int, int]], bounds: list[tuple[int, int]], size: int
) -> None:
    parts = [(min(a, b), max(a, b)) for a, b in parts]
    cut = _cut(parts)
    starts = {p: a for p, (a, _) in enumerate(bounds)}
    ends = {p: b for p, (_, b) in enumerate(bounds)}
    slices = kafka_reprocess_slices("r1", cut, starts, ends, size)
    for p, (log_start, hwm) in enumerate(parts):
        lo = max(log_start, min(starts[p], hwm))
        hi = max(lo, min(ends[p], hwm))
        got = sorted(o for s in slices for r in s.scope.ranges if r.partition == p
                     for o in range(r.start, r.end))  # fmt: skip
        assert got == list(range(lo, hi))  # exactly once, never at/after hwm
    assert all(s.slice_id.startswith("r-r1-k-p") for s in slices)
    assert slices == kafka_reprocess_slices("r1", cut, starts, ends, size)


def test_archive_reprocess_slices_are_clipped_to_the_range() -> None:
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    files = [ArchiveFile("m3.parquet", t0, t0 + timedelta(days=30, hours=23), 100, 1000)]
    start, end = datetime(2024, 3, 28, tzinfo=UTC), datetime(2024, 4, 4, tzinfo=UTC)
    slices = archive_reprocess_slices("r1", files, start, end, "month")
    assert [(s.scope.bucket.start, s.scope.bucket.end) for s in slices if s.scope.bucket] == [
        (start, datetime(2024, 4, 1, tzinfo=UTC))
    ]
    assert slices[0].files == ("m3.parquet",)


def test_run_id_is_derived_from_what_the_run_does() -> None:
    a, b = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC)
    assert run_id_of("j", 1, a, b, "m:f") == run_id_of("j", 1, a, b, "m:f")
    assert run_id_of("j", 1, a, b, "m:f") != run_id_of("j", 1, a, b, "m:g")
    assert run_id_of("j", 1, a, b, "m:f") != run_id_of("j", 2, a, b, "m:f")
