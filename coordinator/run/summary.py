"""Text summaries that scale (10 k slices must not print 10 k rows): problems first, a
bounded number of rows unless ``--all``, humanised bytes, a duration estimate.

Pure functions over the JSON documents the commands already build (``--output json`` stays
complete).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

log = logging.getLogger(__name__)

#: Rows shown by default before "... N more".
DEFAULT_ROWS = 20
#: Slice states in the order a reader needs them: problems first.
STATUS_ORDER = ("failed", "running", "pending", "staged", "committed", "reconciled")

Show = Literal["summary", "all", "failed"]


def humanize_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``.

    >>> humanize_bytes(0), humanize_bytes(1536), humanize_bytes(5 * 1024**3)
    ('0 B', '1.5 KiB', '5.0 GiB')
    """
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit}"


def humanize_seconds(s: float) -> str:
    """``3725`` -> ``1h 2m``.

    >>> humanize_seconds(42), humanize_seconds(3725), humanize_seconds(90061)
    ('42s', '1h 2m', '1d 1h')
    """
    s = int(s + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def counts_text(counts: Mapping[str, int]) -> str:
    """``failed=1 committed=5`` in :data:`STATUS_ORDER` (unknown states last)."""
    order = [k for k in STATUS_ORDER if k in counts] + sorted(set(counts) - set(STATUS_ORDER))
    return " ".join(f"{k}={counts[k]:,}" for k in order) or "no slices"


def _rank(status: str) -> int:
    return STATUS_ORDER.index(status) if status in STATUS_ORDER else len(STATUS_ORDER)


def pick_slices(
    slices: Sequence[Mapping[str, Any]], show: Show, limit: int = DEFAULT_ROWS
) -> tuple[list[Mapping[str, Any]], int]:
    """The slices to print (problems first, then by id) and how many were left out."""
    chosen = [s for s in slices if show != "failed" or s["status"] == "failed"]
    chosen.sort(key=lambda s: (_rank(str(s["status"])), -int(s.get("attempts") or 0),
                               str(s["slice_id"])))  # fmt: skip
    if show == "all":
        return chosen, 0
    return chosen[:limit], max(0, len(chosen) - limit)


def remaining_estimate(slices: Sequence[Mapping[str, Any]], concurrency: int) -> float | None:
    """Seconds left at the pace of the committed slices (rows/s), ``None`` without a pace."""
    done = [s for s in slices if s["status"] in ("staged", "committed", "reconciled")
            and s.get("duration_s") and s.get("rows") is not None]  # fmt: skip
    left = [s for s in slices if s["status"] not in ("staged", "committed", "reconciled")]
    if not left:
        return 0.0
    if not done:
        return None
    seconds = sum(float(s["duration_s"]) for s in done)
    rows = sum(int(s["rows"]) for s in done)
    todo = sum(int(s.get("est_rows") or 0) for s in left)
    if rows <= 0:
        return seconds / len(done) * len(left) / max(1, concurrency)
    return todo / (rows / seconds) / max(1, concurrency)


def plan_totals(slices: Sequence[Mapping[str, Any]]) -> list[tuple[str, int, int, int]]:
    """Per kind (archive, kafka): slices, estimated rows, estimated bytes."""
    out: dict[str, list[int]] = {}
    for s in slices:
        acc = out.setdefault(str(s["kind"]), [0, 0, 0])
        acc[0] += 1
        acc[1] += int(s["est_rows"])
        acc[2] += int(s["est_bytes"])
    return [(kind, v[0], v[1], v[2]) for kind, v in sorted(out.items())]
