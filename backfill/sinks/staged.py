"""Write-audit-publish (``[backfill] publish = "atomic"``): the table as the publish will leave it.

Each slice's data files are staged (written, not committed) by the sink's ``stage_slice`` and
kept in the state store. Before the ONE publish commit, the reconciler audits
:class:`StagedView`: the table's current rows outside every staged slice's scope (overwrite
mode: the publish deletes those scopes; append mode: nothing is deleted) plus the staged rows.
Live rows are outside every history scope, and live commits made after the audit only add rows
above the offsets the audit compared, so what the audit passed is what the publish shows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import reduce
from typing import Any, Protocol

import pyarrow as pa

from backfill.sinks.scopes import arrow_scope
from coordinator.core.ports import CommitRecord
from coordinator.core.values import CommitToken, Offset, PartitionId, Scope, WriteMode

#: The slice id of the publish commit's token (one per job and epoch).
PUBLISH_SLICE = "publish"


class StagingTable(Protocol):
    """What write-audit-publish needs of a table (Iceberg and Lance sinks satisfy it)."""

    mode: WriteMode

    def ensure_table(self) -> None:
        """Create the table if it does not exist."""

    def stage_slice(self, scope: Scope, data: pa.Table, token: CommitToken) -> dict[str, Any]:
        """Write the slice's data files without committing; JSON describing them."""

    def staged_rows(self, staged: Sequence[dict[str, Any]]) -> pa.Table:
        """The rows held by staged files."""

    def publish(
        self, scopes: Sequence[Scope], staged: Sequence[dict[str, Any]], token: CommitToken
    ) -> CommitRecord:
        """One commit making every staged file visible (overwrite: replacing ``scopes``)."""

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None:
        """The newest commit carrying this slice id's token."""

    def live_offsets(self) -> dict[PartitionId, Offset]:
        """Next live offset per partition."""

    def scan(self, scope: Scope | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows of the table."""


class StagedView:
    """A ``TableReader`` over the table as the publish would leave it (see the module doc).

    The table is read once, on first use (the audit compares one consistent state).
    """

    def __init__(
        self,
        table: StagingTable,
        staged: Sequence[dict[str, Any]],
        scopes: Sequence[Scope],
        event_time: str,
    ) -> None:
        self.table, self.staged, self.scopes, self.event_time = table, staged, scopes, event_time
        self._rows: pa.Table | None = None

    def rows(self) -> pa.Table:
        """Every row the published table would hold (current rows read now)."""
        if self._rows is None:
            current = self.table.scan()
            if self.table.mode != "append" and self.scopes and current.num_rows:
                owned = reduce(
                    lambda a, b: a | b, [arrow_scope(s, self.event_time) for s in self.scopes]
                )
                current = current.filter(~owned)
            staged = self.table.staged_rows(self.staged)
            self._rows = pa.concat_tables([current, staged.cast(current.schema)])
        return self._rows

    def live_offsets(self) -> dict[PartitionId, Offset]:
        """The table's live offsets (the live side is not staged)."""
        return self.table.live_offsets()

    def scan(self, scope: Scope | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows of the view, optionally limited to ``scope`` and ``columns``."""
        rows = self.rows()
        if scope is not None:
            rows = rows.filter(arrow_scope(scope, self.event_time))
        return rows.select(columns) if columns else rows

    def scan_batches(self) -> Iterator[pa.RecordBatch]:
        """Every row of the view, batch by batch (the reconciler's one-pass scan)."""
        yield from self.rows().to_batches()
