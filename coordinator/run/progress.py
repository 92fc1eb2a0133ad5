"""Progress reporting for the runner: a rich bar on a TTY, nothing otherwise."""

from __future__ import annotations

import time
from typing import Any, Protocol

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


class ProgressSink(Protocol):
    """What the runner reports while it works."""

    def start(self, total: int, done: int) -> None: ...

    def slice_done(self, rows: int) -> None: ...

    def retry(self) -> None: ...

    def note(self, text: str) -> None: ...

    def stop(self) -> None: ...


class NullProgress:
    """Reports nothing (not a TTY, or ``--output json``)."""

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
