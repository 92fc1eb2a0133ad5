"""The non-TTY progress sink: throttled plain lines with done/total, rows/s, retries, ETA."""

from __future__ import annotations

import io

import pytest

from coordinator.run.progress import LineProgress, RichProgress, progress_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_every_n_slices_and_at_the_end() -> None:
    out, clock = io.StringIO(), Clock()
    sink = LineProgress(out, every_slices=3, every_s=1e9, clock=clock)
    sink.start(total=7, done=1)
    for _ in range(6):
        clock.now += 2.0
        sink.slice_done(rows=10)
    sink.stop()
    lines = out.getvalue().splitlines()
    assert lines[0] == "backfill: 7 slices (1 already committed)"
    assert [line.split(" slices")[0] for line in lines[1:]] == ["backfill: 4/7", "backfill: 7/7"]
    # 3 slices in 6 s: 30 rows / 6 s = 5 rows/s; 3 left at 2 s each = 0:00:06
    assert lines[1] == (
        "backfill: 4/7 slices (57%), 30 rows, 5 rows/s, retries 0, elapsed 0:00:06, ETA 0:00:06"
    )
    assert lines[2].endswith("ETA 0:00:00")


def test_a_quiet_period_longer_than_t_seconds_forces_a_line() -> None:
    out, clock = io.StringIO(), Clock()
    sink = LineProgress(out, every_slices=1000, every_s=30.0, clock=clock)
    sink.start(total=5000, done=0)
    sink.slice_done(rows=1)
    assert len(out.getvalue().splitlines()) == 1
    clock.now += 31.0
    sink.retry()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "1/5,000 slices" in lines[1] and "retries 1" in lines[1]


def test_notes_are_written_and_an_empty_note_is_not() -> None:
    out = io.StringIO()
    sink = LineProgress(out, label="reprocess")
    sink.start(total=1, done=0)
    sink.note("paused 2.0s for live lag")
    sink.note("")
    assert out.getvalue().splitlines()[1:] == ["reprocess: paused 2.0s for live lag"]


def test_every_slices_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every_slices: expected >= 1, found 0"):
        LineProgress(io.StringIO(), every_slices=0)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_terminal_chooses_the_sink() -> None:
    assert isinstance(progress_for(io.StringIO()), LineProgress)
    assert isinstance(progress_for(Tty()), RichProgress)


def test_with_json_logs_every_progress_line_is_a_json_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    monkeypatch.setenv("SEAMLINE_LOG_JSON", "1")
    out = io.StringIO()
    sink = progress_for(out, label="reconcile")
    sink.start(2, 0)
    sink.slice_done(10)
    sink.slice_done(5)
    sink.stop()
    lines = out.getvalue().splitlines()
    assert lines and all(json.loads(line)["progress"] == "reconcile" for line in lines)
    monkeypatch.setenv("SEAMLINE_LOG_JSON", "0")
    plain = io.StringIO()
    progress_for(plain, label="backfill").start(1, 0)
    assert plain.getvalue().startswith("backfill: ")


class Writes(io.StringIO):
    """Records each write call: stderr is write-through, so each call is one syscall."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_each_line_is_one_write_so_worker_log_lines_cannot_land_inside_it() -> None:
    out = Writes()
    sink = LineProgress(out, every_slices=1, json_lines=True)
    sink.start(total=2, done=0)
    sink.slice_done(rows=3)
    sink.slice_done(rows=4)
    assert len(out.calls) == 3
    assert all(call.endswith("\n") and call.count("\n") == 1 for call in out.calls), out.calls
