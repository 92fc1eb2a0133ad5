"""Ports the core depends on. Adapters (Iceberg, Lance, Kafka, archive files) implement them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa

from coordinator.core.values import CommitToken, Offset, PartitionId, Scope, Slice, SnapshotId


@dataclass(frozen=True)
class CommitRecord:
    """A commit found in the table's history, with the token it carried."""

    token: CommitToken
    snapshot_id: SnapshotId  # Iceberg snapshot id or Lance version
    committed_at: datetime
    rows: int | None = None


class LivePosition(Protocol):
    """Where the live side stands in a table: its committed offsets (the lag gate's probe)."""

    def live_offsets(self) -> dict[PartitionId, Offset]:
        """Next offset to consume per partition, from the table's own commit metadata."""


class SliceWriter(Protocol):
    """What the history runner needs of a table (Iceberg or Lance): write one slice.

    Raises ``CommitConflictError`` (certainly not applied, retried internally first),
    ``CommitOutcomeUnknownError`` (look the token up with :meth:`find_commit`),
    ``DuplicateKeyError`` (merge mode), ``WriterError`` for anything else.
    Rows already carry lineage columns.
    """

    def ensure_table(self) -> None:
        """Create the table with the job's schema plus lineage columns if it does not exist."""

    def write_slice(self, scope: Scope, data: pa.Table, token: CommitToken) -> CommitRecord:
        """Replace (overwrite mode) or upsert (merge mode) exactly ``scope`` in one commit.

        Idempotent: if a commit for ``token.job_id``/``token.slice_id`` with the same content
        is already in the table the result is the same table, never a second copy.
        """

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None:
        """The newest commit carrying this slice's token, or ``None``."""


class LiveTable(LivePosition, Protocol):
    """What the live consumer needs of a table: conditional appends and maintenance.

    Errors as :class:`SliceWriter`.
    """

    def ensure_live(self) -> None:
        """Create the table if missing and set what live appends need (e.g. Iceberg's
        manifest-merge and metadata-cleanup properties)."""

    def append_live(self, data: pa.Table, token: CommitToken) -> CommitRecord:
        """Append a live micro-batch; ``token.ranges`` are the batch's offsets, stored atomically."""

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None:
        """The newest commit carrying this batch's token, or ``None``."""

    def maintain(self) -> int:
        """Expire old snapshots / clean up old versions, never losing the live offsets;
        returns how many were removed (0 when skipped, e.g. on a concurrent commit)."""


class TableReader(LivePosition, Protocol):
    """What the reconciler needs of a table: its rows, and where the live side stands."""

    def scan(self, scope: Scope | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows of the table (optionally limited to ``scope``)."""


class TableSink(SliceWriter, LiveTable, TableReader, Protocol):
    """Every table port at once: what the sink registry (``backfill.sinks``) returns.

    Clients declare the narrow port they use (:class:`SliceWriter`, :class:`LiveTable`,
    :class:`TableReader`, :class:`LivePosition`), never this one.
    """


class Transform(Protocol):
    """User code shared by live and history: Arrow in, Arrow out, deterministic."""

    def __call__(self, batch: pa.Table) -> pa.Table: ...


PropertyMap = Mapping[str, str]


@dataclass(frozen=True)
class SliceResult:
    """What executing one slice produced."""

    rows: int
    commit: CommitRecord | None  # None: nothing written (the token was already in the table)
    quarantined: int = 0
    already_committed: bool = False
    #: publish = "atomic": the slice's staged (written, not committed) files and its token
    #: properties, as JSON; ``commit`` is then None
    staged: dict[str, Any] | None = None


class SliceExecutor(Protocol):
    """Runs one slice end to end (read, transform, write). Must be a picklable module-level
    callable: the runner calls it in worker processes. ``job`` is a ``JobSpec``."""

    def __call__(self, job: Any, slice_: Slice, token: CommitToken) -> SliceResult: ...


@dataclass(frozen=True)
class SliceTask:
    """One attempt of one slice, as handed to a :class:`WorkerPool` (picklable values).

    ``executor`` is the ``module:function`` of a :class:`SliceExecutor`, imported in the worker.
    """

    executor: str
    job: Any
    slice_: Slice
    token: CommitToken


@dataclass(frozen=True)
class SliceOutcome:
    """What became of one :class:`SliceTask` (plain values: always picklable).

    Exactly one of ``result`` (committed, or found already committed) and ``error`` (redacted
    text) is set. ``retriable`` says whether another attempt may succeed; ``worker_died`` that
    the worker running it died (killed, out of memory): always retriable.
    """

    slice_id: str
    result: SliceResult | None = None
    error: str | None = None
    retriable: bool = True
    worker_died: bool = False

    def __post_init__(self) -> None:
        if (self.result is None) == (self.error is None):
            raise ValueError(
                f"slice_id={self.slice_id}: expected exactly one of result and error, found "
                f"result={self.result!r} error={self.error!r}"
            )


class WorkerPool(Protocol):
    """Runs slice tasks with bounded concurrency (worker processes locally, Ray across hosts).

    A worker that dies is reported as a :class:`SliceOutcome` with ``worker_died=True`` for
    every task it took with it; the pool replaces it and keeps accepting tasks. Workers never
    outlive the process that owns the pool.
    """

    @property
    def capacity(self) -> int:
        """How many tasks may be in flight at once."""

    def submit(self, task: SliceTask) -> None:
        """Start ``task``; at most :attr:`capacity` may be in flight."""

    def completed(self, timeout_s: float) -> list[SliceOutcome]:
        """Outcomes of tasks finished since the last call, waiting up to ``timeout_s`` for at
        least one (an empty list: none finished in time, or nothing is in flight)."""

    def in_flight(self) -> int:
        """Tasks submitted whose outcome was not yet returned by :meth:`completed`."""

    def shutdown(self, *, terminate: bool = False) -> None:
        """Stop the workers: wait for in-flight tasks, or with ``terminate`` kill them (their
        outcomes are never returned; their slices stay ``running`` for a resume)."""
