"""An in-memory table implementing the ``TableSink`` methods the runner and reconciler use.

Same semantics as the Iceberg and Lance writers (DESIGN §2-§4), over one Arrow table:

* ``write_slice`` in ``overwrite`` mode replaces exactly the slice's scope (its offsets, or its
  archive bucket AND source tag): rows outside the scope, e.g. a late live row in a historical
  day, survive. In ``merge`` mode it upserts by key like the Lance merge: a batch row whose key
  a live row holds is not written (live wins), backfill rows of the batch's keys are replaced
  and rows of the scope whose key the batch lacks are deleted.
* ``append_live`` is conditional on the table's live offsets (a zombie cannot rewrite or skip
  a range) and stores the offsets atomically with the rows.
* Every commit keeps its token; ``find_commit`` returns the newest one of a slice.

Scopes are applied with :func:`backfill.sinks.scopes.arrow_scope`, the same structural
predicate the real sinks scan with. ``inject`` adds rows bypassing every rule, for tests
that need a corrupt table (phantom, duplicate, overlapping rows).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from backfill.sinks import common
from backfill.sinks.scopes import arrow_scope
from coordinator.core import lineage
from coordinator.core.errors import CommitConflictError, WriterError
from coordinator.core.ports import CommitRecord
from coordinator.core.values import CommitToken, Offset, PartitionId, Scope, SnapshotId, WriteMode

if TYPE_CHECKING:
    from coordinator.core.jobspec import JobSpec

log = logging.getLogger(__name__)


class FakeTable:
    """A ``TableSink`` held in memory: one Arrow table plus its commit history."""

    def __init__(
        self,
        schema: pa.Schema,
        event_time: str,
        *,
        mode: WriteMode = "overwrite",
        key: Sequence[str] = (),
        name: str = "fake",
    ) -> None:
        self.schema = lineage.with_lineage(schema)
        self.event_time = event_time
        self.mode = mode
        self.key = tuple(key)
        self.name = name
        self._rows: pa.Table | None = None
        self._offsets: dict[PartitionId, Offset] = {}
        self.commits: list[CommitRecord] = []  # oldest first

    @classmethod
    def for_job(cls, job: JobSpec) -> FakeTable:
        """The fake of ``job``'s table: its schema, event time, write mode and key."""
        return cls(
            job.schema_.arrow_schema(),
            job.schema_.event_time,
            mode=job.backfill.mode,
            key=job.table.key,
            name=job.job_id,
        )

    # -- writing -------------------------------------------------------------------------

    def ensure_table(self) -> None:
        """Create the empty table if it does not exist (idempotent)."""
        if self._rows is None:
            self._rows = self.schema.empty_table()

    def ensure_live(self) -> None:
        """Live appends need nothing beyond the table itself."""
        self.ensure_table()

    def write_slice(self, scope: Scope, data: pa.Table, token: CommitToken) -> CommitRecord:
        """Replace (overwrite) or upsert (merge) exactly ``scope`` in one commit."""
        table = self._table()
        rows = self._conform(data)
        in_scope = self._mask(table, scope)
        if self.mode == "merge":
            common.check_unique_keys(rows, self.key)
            kept, rows = self._merge(table, in_scope, rows)
        else:
            kept = table.filter(pc.invert(in_scope))
        return self._commit(pa.concat_tables([kept, rows]), token, rows.num_rows)

    def _merge(
        self, table: pa.Table, in_scope: pa.ChunkedArray, rows: pa.Table
    ) -> tuple[pa.Table, pa.Table]:
        """(rows kept from ``table``, batch rows written): the Lance merge rule."""
        keys = list(self.key)
        live = pc.equal(table[lineage.SIDE], "live")
        batch_key = self._has_key(table, rows)
        unmatched_in_scope = pc.and_(in_scope, pc.invert(batch_key))
        replaced = pc.and_(batch_key, pc.invert(live))
        kept = table.filter(pc.invert(pc.or_(unmatched_in_scope, replaced)))
        written = common.anti_join(rows, table.filter(live).select(keys), keys)
        return kept, written

    def _has_key(self, table: pa.Table, rows: pa.Table) -> pa.ChunkedArray:
        """Per row of ``table``: is its key in ``rows``?"""
        if not self.key or rows.num_rows == 0 or table.num_rows == 0:
            return pa.chunked_array([pa.array([False] * table.num_rows, pa.bool_())])
        marker = rows.select(list(self.key)).append_column(
            "_hit_", pa.array([True] * rows.num_rows, pa.bool_())
        )
        numbered = table.select(list(self.key)).append_column(
            "_row_", pa.array(range(table.num_rows), pa.int64())
        )
        joined = numbered.join(marker, list(self.key), join_type="left outer")
        hit = joined.sort_by("_row_")["_hit_"]
        return pc.fill_null(hit, False)

    def append_live(self, data: pa.Table, token: CommitToken) -> CommitRecord:
        """Append a live micro-batch if every range starts at the table's live offset."""
        if token.side != "live" or not token.ranges:
            raise WriterError(
                f"slice_id={token.slice_id}: expected a live token with ranges, found "
                f"side={token.side} ranges={len(token.ranges)}"
            )
        moved = common.moved_partitions(token, self._offsets)
        if moved:
            shown = ", ".join(f"partition={p} expected={s} found={f}" for p, s, f in moved)
            raise CommitConflictError(
                f"table={self.name} slice_id={token.slice_id}: live offsets moved ({shown}); "
                "another live consumer committed this range",
                hint="re-read the table's live offsets and re-seek",
            )
        rows = self._conform(data)
        record = self._commit(pa.concat_tables([self._table(), rows]), token, rows.num_rows)
        ends = common.parse_live_offsets(common.live_offset_properties(token))
        self._offsets = common.merge_offsets(self._offsets, ends)
        return record

    def inject(self, data: pa.Table) -> None:
        """Add rows without any rule or token (tests: a corrupt table)."""
        self._rows = pa.concat_tables([self._table(), self._conform(data)])

    def maintain(self) -> int:
        """Nothing to expire: the fake keeps every commit. Returns 0."""
        return 0

    # -- reading -------------------------------------------------------------------------

    def live_offsets(self) -> dict[PartitionId, Offset]:
        """Next offset to consume per partition, from the live commits."""
        return dict(self._offsets)

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None:
        """The newest commit carrying this slice's token, or ``None``."""
        for rec in reversed(self.commits):
            if rec.token.job_id == job_id and rec.token.slice_id == slice_id:
                return rec
        return None

    def scan(self, scope: Scope | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows of the table, optionally limited to ``scope`` and ``columns``."""
        table = self._table()
        if scope is not None:
            table = table.filter(self._mask(table, scope))
        return table.select(columns) if columns is not None else table

    # -- internals -----------------------------------------------------------------------

    def _table(self) -> pa.Table:
        if self._rows is None:
            raise WriterError(
                f"table={self.name}: expected an existing table, found none",
                hint="call ensure_table() first",
            )
        return self._rows

    def _conform(self, data: pa.Table) -> pa.Table:
        try:
            return common.conform(data, self.schema, sort_by=self.event_time)
        except (ValueError, TypeError, pa.ArrowInvalid) as exc:
            raise WriterError(
                f"table={self.name}: rows do not fit the table schema ({exc})",
                hint="check the transform returns the job's schema",
            ) from None

    def _mask(self, table: pa.Table, scope: Scope) -> pa.ChunkedArray:
        """Per row: does ``scope`` own it (nulls count as no)?"""
        if table.num_rows == 0:
            return pa.chunked_array([pa.array([], pa.bool_())])
        expr = arrow_scope(scope, self.event_time)
        numbered = table.append_column("_row_", pa.array(range(table.num_rows), pa.int64()))
        hit = set(numbered.filter(expr)["_row_"].to_pylist())
        return pa.chunked_array([pa.array([i in hit for i in range(table.num_rows)])])

    def _commit(self, rows: pa.Table, token: CommitToken, written: int) -> CommitRecord:
        self._rows = rows.combine_chunks()
        record = CommitRecord(token, SnapshotId(len(self.commits) + 1), datetime.now(UTC), written)
        self.commits.append(record)
        log.debug("fake commit table=%s slice_id=%s", self.name, token.slice_id)
        return record
