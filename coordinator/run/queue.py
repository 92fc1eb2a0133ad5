"""The runner's queue of slices still to run: first-time slices in plan order read lazily from
the state store, retries ordered by the time they may run again; and which slices a (partial)
run selects."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from fnmatch import fnmatchcase

from coordinator.core.errors import ConfigError
from coordinator.core.values import Slice, SliceStatus
from coordinator.state.store import SliceRecord

#: The states a run executes (a ``running`` slice was left by a dead coordinator).
TODO: tuple[SliceStatus, ...] = ("pending", "running", "failed")

#: Slices read ahead from the store at a time (the queue's memory bound).
READ_AHEAD = 1_000


class SliceQueue:
    """The slices still to run: first-time slices in plan order, read lazily from an iterator
    (a page of the store at a time), and retries by the time they may run again (a heap).

    Every operation is O(1) or O(log retries): a million-slice plan is never held in memory
    or scanned per submission.
    """

    def __init__(self, source: Iterable[Slice], read_ahead: int = READ_AHEAD) -> None:
        self._source: Iterator[Slice] | None = iter(source)
        self._ready: deque[Slice] = deque()
        self._later: list[tuple[float, int, Slice]] = []  # (not_before, seq, slice)
        self._seq = 0
        self._read_ahead = read_ahead

    def _fill(self) -> None:
        if self._ready or self._source is None:
            return
        for s in self._source:
            self._ready.append(s)
            if len(self._ready) >= self._read_ahead:
                return
        self._source = None

    def pop(self, now: float) -> Slice | None:
        """The next slice that may run at ``now`` (a due retry first), or ``None``."""
        if self._later and self._later[0][0] <= now:
            return heapq.heappop(self._later)[2]
        self._fill()
        return self._ready.popleft() if self._ready else None

    def retry(self, not_before: float, slice_: Slice) -> None:
        """Run ``slice_`` again once the clock reaches ``not_before``."""
        self._seq += 1
        heapq.heappush(self._later, (not_before, self._seq, slice_))

    def soonest(self) -> float | None:
        """When the next slice may run (``-inf``: now), ``None`` when nothing is left."""
        self._fill()
        if self._ready:
            return float("-inf")
        return self._later[0][0] if self._later else None


def _needs_run(record: SliceRecord) -> bool:
    return record.status in TODO


def select_slices(
    records: Iterable[SliceRecord], only: Sequence[str] = (), limit: int | None = None
) -> tuple[list[str], list[str]]:
    """(slices to run, slices still to do that the selection leaves out), in plan order, in
    one pass over ``records`` (the plan in plan order; only ids are kept).

    ``only`` globs (``fnmatch``, case-sensitive) must each match some slice of the plan,
    committed or not: a glob matching nothing is a ConfigError (a typo would otherwise run
    nothing and look like success). ``limit`` keeps the first ``limit`` matching slices.
    """
    unmatched = list(only)
    sample: list[str] = []
    seen = 0
    chosen: list[str] = []
    left: list[str] = []
    for r in records:
        sid = r.slice_id
        seen += 1
        if len(sample) < 3:
            sample.append(sid)
        unmatched = [p for p in unmatched if not fnmatchcase(sid, p)]
        if not _needs_run(r):
            continue
        wanted = not only or any(fnmatchcase(sid, p) for p in only)
        (chosen if wanted and (limit is None or len(chosen) < limit) else left).append(sid)
    for pattern in unmatched:
        shown = ", ".join(sample) + (", ..." if seen > 3 else "")
        raise ConfigError(
            f"--only {pattern!r}: expected a glob matching slice ids of the plan, "
            f"found no match among {seen} slices ({shown})",
            hint="see `seamline plan JOB` or `seamline status JOB` for the slice ids",
        )
    return chosen, left
