"""Named crash points: kill this process with SIGKILL at a named place, for fault testing.

Off by default. ``SEAMLINE_CRASH_AT=<point>[:<nth>]`` arms one point: the ``nth`` time (1 by
default) this process reaches it, it kills itself with ``SIGKILL`` -- no ``finally`` block,
no ``atexit``, no flush runs, exactly as under ``kill -9``. When ``SEAMLINE_CRASH_MARKER``
names a file, the point fires only if it can create that file (exclusively), and writes
``<point> <pid>`` into it first: the crash happens once across every process of a run (a
retried worker or a restarted coordinator inherits the variable but does not die again), and
the test reads where the process died. The variable is read once,
at import: when it is unset, :func:`crash_point` is one global lookup and a return.

Worker processes inherit the variable and count their own reaches. A test that arms a point
in an already running process calls :func:`arm`.

>>> parse("worker.after_commit:3")
('worker.after_commit', 3)
>>> parse("live.mid_batch")
('live.mid_batch', 1)
"""

from __future__ import annotations

import logging
import os
import signal

from coordinator.core.errors import ConfigError

log = logging.getLogger(__name__)

CRASH_ENV = "SEAMLINE_CRASH_AT"
MARKER_ENV = "SEAMLINE_CRASH_MARKER"

#: Every crash point the product defines, with where it sits.
POINTS: dict[str, str] = {
    "coordinator.after_cut": "the cut is stored in the state store, nothing else written",
    "coordinator.mid_plan": "the plan is computed, not yet stored",
    "worker.before_commit": "a slice's data files are written, the table commit not made",
    "worker.after_commit": "the slice is committed to the table, the state store not told",
    "worker.commit_retry": "a slice commit conflicted and is about to be retried",
    "live.mid_batch": "a live micro-batch is polled and decoded, not yet written",
    "live.after_commit": "a live micro-batch is committed, its bookkeeping not yet done",
    "run.before_publish": "publish = atomic: every slice staged and audited, the one publish "
    "commit not yet made",
    "run.after_batch_commit": "committer = coordinator: a batch of staged slices is committed "
    "to the table in one commit, the state store not told",
    "reconcile.mid_scan": "the reconciler has read the source side, not the table side",
    "reprocess.between_slices": "a reprocess slice is committed, the next not yet started",
    "maintenance": "table maintenance (snapshot expiry / cleanup) is about to run",
}

_target: tuple[str, int] | None = None
_reached = 0


def parse(value: str) -> tuple[str, int]:
    """``<point>[:<nth>]`` -> (point, nth); a clear error for an unknown point or a bad nth."""
    point, _, nth_text = value.strip().partition(":")
    if point not in POINTS:
        known = ", ".join(sorted(POINTS))
        raise ConfigError(
            f"{CRASH_ENV}: expected one of {known}, found point={point!r}; "
            f"unset {CRASH_ENV} to run without crash points"
        )
    try:
        nth = int(nth_text) if nth_text else 1
    except ValueError:
        nth = 0
    if nth < 1:
        raise ConfigError(f"{CRASH_ENV}: expected a count >= 1 after ':', found {nth_text!r}")
    return point, nth


def arm(value: str | None) -> None:
    """Arm ``<point>[:<nth>]`` in this process (``None`` disarms); resets the reach count."""
    global _target, _reached, _conflict_forced
    _target = parse(value) if value else None
    _reached = 0
    _conflict_forced = False


def crash_point(name: str) -> None:
    """SIGKILL this process if ``name`` is the armed point and this is its ``nth`` reach."""
    if _target is None:
        return
    _reach(name)


class ForcedConflict(Exception):
    """A slice commit attempt refused before it was made, to reach ``worker.commit_retry``."""


_conflict_forced = False

#: The point on the retry path of a slice commit (see :func:`force_conflict`).
RETRY_POINT = "worker.commit_retry"


def force_conflict(what: str) -> None:
    """Raise :class:`ForcedConflict` on this process's first slice commit attempt when
    ``worker.commit_retry`` is armed and has not fired yet.

    A retry happens only when another writer commits in between, which a trial cannot time;
    so arming the point also refuses one attempt, before anything is written or committed
    (exactly what a real conflict leaves: nothing applied). The commit path then takes its
    retry, where the point fires. Zero cost when no point is armed.
    """
    global _conflict_forced
    if _target is None or _target[0] != RETRY_POINT or _conflict_forced:
        return
    marker = os.environ.get(MARKER_ENV)
    if marker and os.path.exists(marker):
        return  # the point fired already (a retried worker or a restarted coordinator)
    _conflict_forced = True
    raise ForcedConflict(f"{what}: commit attempt refused ({CRASH_ENV}={RETRY_POINT})")


def _reach(name: str) -> None:
    global _reached
    point, nth = _target or ("", 0)
    if name != point:
        return
    _reached += 1
    if _reached != nth:
        return
    log.warning("crash point reached: point=%s nth=%d pid=%d", name, nth, os.getpid())
    marker = os.environ.get(MARKER_ENV)
    if marker:
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # fired already (in this or another process)
        os.write(fd, f"{name} {os.getpid()}\n".encode())
        os.fsync(fd)
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


arm(os.environ.get(CRASH_ENV))
