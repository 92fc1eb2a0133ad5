"""Whether this process is a long-lived slice worker, which may keep what it opened (a job's
catalog and table) from one slice to the next.

A local worker-pool process is one by birth (it has a ``multiprocessing`` parent); a Ray
worker is not a ``multiprocessing`` child, so the Ray task marks its process with
:func:`become_slice_worker` before it runs a slice.
"""

from __future__ import annotations

import multiprocessing

_SLICE_WORKER = False


def become_slice_worker() -> None:
    """Mark this process as one that serves many slices (idempotent)."""
    global _SLICE_WORKER
    _SLICE_WORKER = True


def is_slice_worker() -> bool:
    """A worker-pool child process, or one marked by :func:`become_slice_worker`."""
    return _SLICE_WORKER or multiprocessing.parent_process() is not None
