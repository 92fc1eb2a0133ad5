"""How every Lance call of one dataset reaches its store: object-store options and, where the
store's conditional put is not atomic, a host-local commit lock.

Lance commits a version by writing its manifest with put-if-absent. Amazon S3 (and MinIO, R2,
GCS) make that atomic; some S3-compatible servers check and write in two steps (S3Proxy 2.9
checks ``If-None-Match`` before writing), so two racing commits can both "win" and one is lost.
``[table.storage] commit_lock = "host"`` serialises this dataset's commits through a lock file
on this host (every writer of the dataset must then run on this host).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOCK_DIR = Path(tempfile.gettempdir()) / "seamline-lance-commit-locks"


def host_commit_lock(uri: str) -> Callable[[int], contextlib.AbstractContextManager[None]]:
    """A Lance ``CommitLock`` holding an exclusive ``flock`` on a file named after ``uri``."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    path = LOCK_DIR / f"{hashlib.sha256(uri.encode()).hexdigest()[:32]}.lock"

    @contextlib.contextmanager
    def lock(_version: int) -> Iterator[None]:
        with open(path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    return lock


def dataset_io(
    uri: str, storage_options: dict[str, str] | None, host_lock: bool
) -> dict[str, Any]:
    """Keyword arguments for ``lance.dataset``, ``write_dataset`` and ``LanceDataset.commit``
    (the options hold secrets: never log them)."""
    io: dict[str, Any] = {"storage_options": storage_options}
    if host_lock:
        io["commit_lock"] = host_commit_lock(uri)
    return io


__all__ = ["LOCK_DIR", "dataset_io", "host_commit_lock"]
