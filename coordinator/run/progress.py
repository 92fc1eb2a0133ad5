"""Progress reporting: a rich bar on a TTY, throttled plain lines otherwise (:func:`progress_for`)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from coordinator.core.logs import current_log_settings


class ProgressSink(Protocol):
    """What the runner reports while it works."""

    def start(self, total: int, done: int) -> None: ...

    def slice_done(self, rows: int) -> None: ...

    def retry(self) -> None: ...

    def note(self, text: str) -> None: ...

    def stop(self) -> None: ...


class NullProgress:
    """Reports nothing (library use without a sink)."""

    def start(self, total: int, done: int) -> None:
        """Nothing to show."""

    def slice_done(self, rows: int) -> None:
        """Nothing to show."""

    def retry(self) -> None:
        """Nothing to show."""

    def note(self, text: str) -> None:
        """Nothing to show."""

    def stop(self) -> None:
        """Nothing to show."""


class RichProgress:
    """Completed vs remaining slices, rows/s, retries and ETA on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]slices"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TextColumn("retries {task.fields[retries]}"),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task: TaskID | None = None
        self._rows = 0
        self._retries = 0
        self._t0 = time.monotonic()

    def start(self, total: int, done: int) -> None:
        """Show the bar with ``done`` of ``total`` slices already committed."""
        self._progress.start()
        self._t0 = time.monotonic()
        self._task = self._progress.add_task(
            "slices", total=total, completed=done, rate="0", retries=0, note=""
        )

    def _update(self, advance: int = 0, note: str | None = None) -> None:
        if self._task is None:
            return
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        fields: dict[str, Any] = {"rate": f"{self._rows / elapsed:,.0f}"}
        fields["retries"] = self._retries
        if note is not None:
            fields["note"] = note
        self._progress.update(self._task, advance=advance, **fields)

    def slice_done(self, rows: int) -> None:
        """One more slice committed."""
        self._rows += rows
        self._update(advance=1)

    def retry(self) -> None:
        """One more retry scheduled."""
        self._retries += 1
        self._update()

    def note(self, text: str) -> None:
        """A short status (e.g. paused for live lag)."""
        self._update(note=text)

    def stop(self) -> None:
        """Remove the live display."""
        self._progress.stop()


class LineProgress:
    """Throttled plain lines for logs and pipes (CI, Airflow, ``nohup``, ``| tee``).

    A line is written at the start, every ``every_slices`` committed slices or ``every_s``
    seconds (whichever comes first), on a note, and at the end: done/total, rows/s, retries
    and an ETA from this run's pace. ``every_slices=None`` means about every 5 % of the run.
    """

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        label: str = "backfill",
        every_slices: int | None = None,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        json_lines: bool = False,
    ) -> None:
        if every_slices is not None and every_slices < 1:
            raise ValueError(f"every_slices: expected >= 1, found {every_slices}")
        self._out = out if out is not None else sys.stderr
        self._label, self._every_slices, self._every_s = label, every_slices, every_s
        self._clock, self._json = clock, json_lines
        self._total = self._done = self._done_before = self._rows = self._retries = 0
        self._t0 = self._last_line = clock()
        self._since_line = 0

    def _say(self, text: str) -> None:
        self._last_line, self._since_line = self._clock(), 0
        msg = f"{self._label}: {text}"
        line = msg if not self._json else json.dumps(
            {"level": "INFO", "logger": __name__, "msg": msg, "progress": self._label}
        )
        # One write per line: stderr is write-through, so print()'s separate newline write
        # lets a worker's log line land between this line and its newline.
        self._out.write(line + "\n")
        self._out.flush()

    def _line(self) -> str:
        elapsed = max(self._clock() - self._t0, 1e-6)
        ran = self._done - self._done_before
        left = self._total - self._done
        eta = "?" if ran == 0 else _clock_text(elapsed / ran * left)
        pct = 100 * self._done / self._total if self._total else 100.0
        return (
            f"{self._done:,}/{self._total:,} slices ({pct:.0f}%), {self._rows:,} rows, "
            f"{self._rows / elapsed:,.0f} rows/s, retries {self._retries}, "
            f"elapsed {_clock_text(elapsed)}, ETA {eta}"
        )

    def _due(self) -> bool:
        every = self._every_slices or max(1, self._total // 20)
        return self._since_line >= every or self._clock() - self._last_line >= self._every_s

    def start(self, total: int, done: int) -> None:
        """The run begins with ``done`` of ``total`` slices already committed."""
        self._total, self._done, self._done_before = total, done, done
        self._t0 = self._clock()
        self._say(f"{total:,} slices ({done:,} already committed)")

    def slice_done(self, rows: int) -> None:
        """One more slice committed."""
        self._done += 1
        self._rows += rows
        self._since_line += 1
        if self._due() or self._done == self._total:
            self._say(self._line())

    def retry(self) -> None:
        """One more retry scheduled."""
        self._retries += 1
        if self._due():
            self._say(self._line())

    def note(self, text: str) -> None:
        """A short status (e.g. paused for live lag); an empty note clears nothing here."""
        if text:
            self._say(text)

    def stop(self) -> None:
        """The final line (unless the last slice just printed it)."""
        if self._since_line:
            self._say(self._line())


def _clock_text(seconds: float) -> str:
    """``1:02:03`` style."""
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_for(stream: TextIO | None = None, *, label: str = "backfill") -> ProgressSink:
    """The one sink chosen by the terminal: a rich bar on a TTY, throttled lines otherwise
    (JSON objects when the CLI logs JSON, so every stderr line stays machine-readable)."""
    out = stream if stream is not None else sys.stderr
    if out.isatty():
        return RichProgress(Console(file=out))
    return LineProgress(out, label=label, json_lines=current_log_settings()[1])
