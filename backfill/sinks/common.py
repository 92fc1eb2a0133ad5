"""Pieces both table writers share: data preparation, key checks, commit retries, tokens.

Pure functions, except :func:`retry_conflicts`, which sleeps between attempts.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core import faults, lineage
from coordinator.core.errors import (
    CommitConflictError,
    CommitOutcomeUnknownError,
    DuplicateKeyError,
    SeamlineError,
    WriterError,
)
from coordinator.core.faults import crash_point as crash_point  # the sinks' call sites
from coordinator.core.ports import CommitRecord
from coordinator.core.retry import RetryPolicy as RetryPolicy  # re-exported for the sinks
from coordinator.core.retry import call_with_retry
from coordinator.core.values import (
    TOKEN_PREFIX,
    CommitToken,
    Offset,
    PartitionId,
    end_offsets,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Table/dataset-level property prefix holding the newest live offset per partition.
LIVE_OFFSET_PREFIX = f"{TOKEN_PREFIX}live.offset."


@contextlib.contextmanager
def dataset_lock(uri: str, name: str) -> Iterator[None]:
    """An exclusive host-local file lock beside a local dataset (no-op for remote URIs).

    Only an optimisation (fair turns between writers on one host) or a serialisation of work
    that must not overlap; correctness never depends on it for remote datasets.
    """
    if "://" in uri:
        yield
        return
    path = Path(uri)
    lock = path.parent / f".{path.name}.seamline-{name}.lock"
    with open(lock, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def location_lock(location: str, name: str) -> Iterator[None]:
    """:func:`dataset_lock` beside a table location given as a path or ``file://`` URI (no-op
    for remote locations)."""
    path = location.removeprefix("file://")
    with dataset_lock(path.rstrip("/") or path, name):
        yield


#: Commit conflicts: quick retries (a conflicting commit is ~100 ms of work), equal jitter.
DEFAULT_RETRY = RetryPolicy(attempts=8, base_s=0.05, max_s=2.0, jitter="equal")


#: The one publish commit of a write-audit-publish run: more retries than a slice (it must
#: land between two live commits, and a run makes it once, so it is worth insisting).
#: The waits leave the state store's epoch lock (held by each attempt) free for other writers.
PUBLISH_RETRY = RetryPolicy(attempts=30, base_s=0.2, max_s=2.0, jitter="equal")


@dataclass(frozen=True)
class MaintenancePolicy:
    """How often and how far table maintenance (snapshot expiry / version cleanup) goes.

    ``every_commits``: live commits between two automatic runs (0: only explicit
    ``maintain()`` calls); ``keep_versions``: newest snapshots/versions always kept;
    ``min_age_s``: nothing younger than this is removed (concurrent readers).
    """

    keep_versions: int = 20
    every_commits: int = 50
    min_age_s: float = 60.0
    #: compaction: data files smaller than this are "small" ...
    small_file_bytes: int = 32 * 1024 * 1024
    #: ... and a partition is rewritten when it holds at least this many of them
    min_files: int = 2

    def __post_init__(self) -> None:
        if self.keep_versions < 1 or self.every_commits < 0 or self.min_age_s < 0:
            raise ValueError(
                f"expected keep_versions >= 1, every_commits >= 0, min_age_s >= 0, found {self}"
            )
        if self.small_file_bytes < 1 or self.min_files < 2:
            raise ValueError(f"expected small_file_bytes >= 1 and min_files >= 2, found {self}")


@dataclass(frozen=True)
class Compaction:
    """What one compaction did: partitions rewritten, data files removed and added, rows
    rewritten, and commits refused by a concurrent writer (re-planned)."""

    partitions: int = 0
    files_removed: int = 0
    files_added: int = 0
    rows: int = 0
    conflicts: int = 0

    def __post_init__(self) -> None:
        if min(self.partitions, self.files_removed, self.files_added, self.rows) < 0:
            raise ValueError(f"expected non-negative counts, found {self}")

    def plus(self, **more: int) -> Compaction:
        """A copy with ``more`` added to the named counts."""
        fields = {k: getattr(self, k) + more.get(k, 0) for k in self.__dataclass_fields__}
        return Compaction(**fields)


@dataclass(frozen=True)
class MaintenanceReport:
    """One maintenance pass over a table: snapshots/versions expired, and the compaction."""

    expired: int
    compaction: Compaction

    def as_dict(self) -> dict[str, int]:
        """Flat counts for rendering (``seamline maintain --output json``)."""
        c = self.compaction
        return {
            "expired": self.expired,
            "partitions_compacted": c.partitions,
            "files_removed": c.files_removed,
            "files_added": c.files_added,
            "rows_rewritten": c.rows,
            "conflicts": c.conflicts,
        }


DEFAULT_MAINTENANCE = MaintenancePolicy()


@runtime_checkable
class MaintainableTable(Protocol):
    """A table seamline can maintain in one pass (``seamline maintain``)."""

    def maintain_table(self) -> MaintenanceReport:
        """Compact small files, then expire old snapshots / versions."""
        ...


def retry_conflicts(
    what: str,
    action: Callable[[], T],
    is_conflict: Callable[[BaseException], bool],
    policy: RetryPolicy = DEFAULT_RETRY,
) -> T:
    """Run ``action``; on a conflict (certainly not applied) wait and run it again.

    Raises ``CommitConflictError`` once ``policy.attempts`` conflicts in a row were seen.
    Non-conflict errors propagate unchanged.
    """

    def on_retry(attempt: int, exc: BaseException, wait: float) -> None:
        log.info("commit conflict, retrying: %s (attempt=%d, wait_s=%.3f)", what, attempt, wait)
        crash_point("worker.commit_retry")

    try:
        return call_with_retry(action, policy, on_retry=on_retry, retry_on=is_conflict)
    except Exception as exc:
        if not is_conflict(exc):
            raise
        raise CommitConflictError(
            f"{what}: expected the commit to land, found {policy.attempts} conflicts in a row "
            f"(last: {type(exc).__name__}: {exc})",
            hint="live traffic may be starving the backfill; lower live batch "
            "frequency or retry the slice later",
        ) from exc


#: A commit guard: ``guard(token)`` is entered around every commit attempt; it refuses by
#: raising on entry and holds whatever makes its check true until the commit returned.
CommitGuard = Callable[[CommitToken], contextlib.AbstractContextManager[object]]

_COMMIT_GUARD: ContextVar[CommitGuard | None] = ContextVar("seamline_commit_guard", default=None)


@contextlib.contextmanager
def commit_guard(guard: CommitGuard) -> Iterator[None]:
    """Enter ``guard(token)`` around every commit attempt made inside this block.

    The coordinator's workers (and ``reprocess``) install the state store's epoch lock here
    (:meth:`coordinator.state.base.StoreBase.epoch_held`): the epoch is checked and the job's
    row stays locked until the table commit returned, so a new epoch (``cut --new-cut``) is
    taken either before the check (the guard raises ``StaleEpochError``, nothing is committed)
    or after the commit landed; never in between. A stale coordinator's commit cannot land
    after the epoch moved on.
    """
    reset = _COMMIT_GUARD.set(guard)
    try:
        yield
    finally:
        _COMMIT_GUARD.reset(reset)


def commit_with_token(
    what: str,
    token: CommitToken,
    action: Callable[[], T],
    *,
    is_conflict: Callable[[BaseException], bool],
    policy: RetryPolicy,
    find_exact: Callable[[CommitToken], CommitRecord | None],
) -> T | CommitRecord:
    """Run one commit and classify its failure (DESIGN §3).

    Returns what ``action`` returned when it committed, or the :class:`CommitRecord` found by
    token when the commit reported an error but had landed. Raises ``CommitConflictError``
    (certainly not applied, after the policy's retries), ``WriterError`` (refused before
    anything was committed) or ``CommitOutcomeUnknownError`` (may have landed, token not
    found: never delete files in that state).
    """
    guard = _COMMIT_GUARD.get()

    def guarded() -> T:
        faults.force_conflict(what)  # only when worker.commit_retry is armed
        if guard is None:
            return action()
        with guard(token):
            return action()

    def conflict(exc: BaseException) -> bool:
        return isinstance(exc, faults.ForcedConflict) or is_conflict(exc)

    try:
        return retry_conflicts(what, guarded, conflict, policy)
    except SeamlineError:  # raised on purpose (a guard, a refusal): certainly not applied
        raise
    except (ValueError, TypeError) as exc:  # refused before anything was committed
        raise WriterError(f"{what}: write refused ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:
        found = find_exact(token)
        if found is not None:
            log.warning("commit reported %s but the token landed: %s", exc, what)
            return found
        raise CommitOutcomeUnknownError(
            f"{what}: commit outcome unknown ({type(exc).__name__}: {exc}); token not found",
            hint="look the token up with find_commit before retrying; never delete files",
        ) from exc


def conform(data: pa.Table, schema: pa.Schema, sort_by: str | None = None) -> pa.Table:
    """``data`` with exactly ``schema``'s columns and types, one contiguous chunk per column,
    sorted by ``sort_by`` (so partitioned writers see each partition value once)."""
    missing = [n for n in schema.names if n not in data.column_names]
    if missing:
        raise ValueError(f"expected columns {schema.names}, found no {missing}")
    table = data.select(schema.names).cast(schema)
    if sort_by is not None and table.num_rows > 1:
        table = table.sort_by([(sort_by, "ascending")])
    return table.combine_chunks()


def check_unique_keys(data: pa.Table, keys: Sequence[str]) -> None:
    """Raise ``DuplicateKeyError`` naming up to ten keys that occur more than once."""
    if not keys or data.num_rows == 0:
        return
    counts = data.group_by(list(keys)).aggregate([([], "count_all")])
    dup = counts.filter(pc.greater(counts["count_all"], 1))
    if dup.num_rows:
        shown = dup.slice(0, 10).select(list(keys)).to_pylist()
        raise DuplicateKeyError(
            f"merge batch holds {dup.num_rows} duplicate keys on {list(keys)}, e.g. {shown}",
            hint="deduplicate the source (a transform) or use mode='overwrite'",
        )


def anti_join(left: pa.Table, right_keys: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Rows of ``left`` whose key is not in ``right_keys``."""
    if left.num_rows == 0 or right_keys.num_rows == 0:
        return left
    out = left.join(right_keys.select(list(keys)), keys=list(keys), join_type="left anti")
    return out.select(left.column_names).cast(left.schema).combine_chunks()


def semi_keys(left: pa.Table, right_keys: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Distinct keys present in both tables."""
    if left.num_rows == 0 or right_keys.num_rows == 0:
        return right_keys.select(list(keys)).slice(0, 0)
    hit = left.select(list(keys)).join(
        right_keys.select(list(keys)), keys=list(keys), join_type="left semi"
    )
    return hit.group_by(list(keys)).aggregate([])


def live_offset_properties(token: CommitToken) -> dict[str, str]:
    """Per-partition "next offset to consume" properties for a live batch's token."""
    return {f"{LIVE_OFFSET_PREFIX}{p}": str(o) for p, o in end_offsets(token.ranges).items()}


def parse_live_offsets(props: Mapping[str, str]) -> dict[PartitionId, Offset]:
    """Inverse of :func:`live_offset_properties` over a property map."""
    out: dict[PartitionId, Offset] = {}
    for k, v in props.items():
        if k.startswith(LIVE_OFFSET_PREFIX):
            out[PartitionId(int(k[len(LIVE_OFFSET_PREFIX) :]))] = Offset(int(v))
    return out


def moved_partitions(
    token: CommitToken, current: dict[PartitionId, Offset]
) -> list[tuple[PartitionId, Offset, Offset]]:
    """``(partition, batch start, table offset)`` for every range not starting at the table's
    current live offset of its partition (empty: the append may commit)."""
    out = []
    for r in token.ranges:
        found = current.get(r.partition)
        if found is not None and found != r.start:
            out.append((r.partition, r.start, found))
    return out


def merge_offsets(
    into: dict[PartitionId, Offset], more: dict[PartitionId, Offset]
) -> dict[PartitionId, Offset]:
    """Per-partition maximum (offsets never move backwards)."""
    out = dict(into)
    for p, o in more.items():
        out[p] = max(out.get(p, o), o)
    return out


def ms_to_datetime(ms: int) -> datetime:
    """Epoch milliseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def lineage_sort_key(event_time: str | None) -> str:
    """Column to sort writes by: event time when known, else the offset."""
    return event_time or lineage.OFFSET
