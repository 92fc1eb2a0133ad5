"""Iceberg side of merge by key (``backfill.sinks.merge``): read, decide, stage (DESIGN §4).

One attempt reads every table row of the batch's keys at the table's current snapshot (a key
filter built structurally, so archive rows with null lineage are found too; Iceberg prunes
data files by the key column's statistics), decides the winners in Arrow, writes the winners'
data files and stages "delete the replaced keys, add the files" in the caller's transaction.
The commit carries :class:`AssertSnapshotUnchanged`: if anything committed since the read,
the attempt fails as a conflict (a ``ValidationException``, which pyiceberg does not rebase:
its rebase would keep a plan made on an older snapshot, and a delete that matched nothing is
not validated at all) and the caller re-plans on the new snapshot, so the comparison is always
made against the versions present at commit time. On one host, merge writers of a table in a
local warehouse take turns through a file lock (:func:`merge_lock`), so history slices and
live batches do not starve each other with conflicts; remote warehouses rely on the
requirement and the retry policy alone.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import ValidationException
from pyiceberg.expressions import AlwaysFalse, BooleanExpression
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table, Transaction
from pyiceberg.table.update import ValidatableTableRequirement

from backfill.sinks import common, merge
from backfill.sinks.iceberg.write import stage_overwrite, write_data_files
from backfill.sinks.scopes import ice_and, ice_eq, ice_in, ice_or

log = logging.getLogger(__name__)

_NO_MATCH = "Delete operation did not match any records"


class SnapshotMovedError(ValidationException):  # type: ignore[misc]
    """A merge was planned on a snapshot that is no longer current: certainly not applied."""


class AssertSnapshotUnchanged(ValidatableTableRequirement):  # type: ignore[misc]
    """Requirement: the table's current snapshot is still the one the merge was planned on
    (validated by the catalog at commit; survives pyiceberg's retry rebuild)."""

    type: Literal["assert-seamline-merge-snapshot"] = "assert-seamline-merge-snapshot"
    snapshot_id: int | None

    def validate(self, base_metadata: Any) -> None:  # type: ignore[override]
        """Raise :class:`SnapshotMovedError` when another commit landed since the plan."""
        found = base_metadata.current_snapshot_id if base_metadata is not None else None
        if found != self.snapshot_id:
            raise SnapshotMovedError(
                f"merge planned on snapshot_id={self.snapshot_id}, found snapshot_id={found}: "
                "re-plan on the new snapshot"
            )


@contextlib.contextmanager
def merge_lock(table: Table) -> Iterator[None]:
    """Host-local turns for merge writers of a table in a local warehouse (no-op otherwise)."""
    loc = urlparse(table.location())
    if loc.scheme not in ("", "file"):
        yield
        return
    path = Path(unquote(loc.path).rstrip("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with common.dataset_lock(str(path), "merge"):
        yield


def key_filter(keys: tuple[str, ...], key_rows: pa.Table) -> BooleanExpression:
    """``key IN (...)`` or an OR of key-tuple equalities; always false for no keys."""
    if key_rows.num_rows == 0:
        out: BooleanExpression = AlwaysFalse()
        return out
    if len(keys) == 1:
        return ice_in(keys[0], set(key_rows.column(keys[0]).to_pylist()))
    return ice_or(
        *[
            ice_and(*[ice_eq(k, v) for k, v in zip(keys, t, strict=True)])
            for t in merge.key_values(key_rows, keys)
        ]
    )


def plan_files(
    table: Table,
    rows: pa.Table,
    rule: merge.MergeRule,
    sort_by: str | None = None,
    scope: tuple[BooleanExpression, pc.Expression] | None = None,
) -> tuple[list[DataFile], BooleanExpression]:
    """Data files of the winners and the delete filter of the keys they replace; rows of the
    slice's own ``scope`` (Iceberg and Arrow forms; a re-written history slice) are not
    versions to compare (the caller deletes that scope too)."""
    if rows.num_rows == 0:
        return [], AlwaysFalse()
    flt = key_filter(rule.key, rows)
    existing = merge.outside(table.scan(row_filter=flt).to_arrow(), scope and scope[1])
    decided = merge.plan(rows, existing, rule)
    log.debug(
        "merge plan: batch=%d existing=%d write=%d replace=%d",
        rows.num_rows,
        existing.num_rows,
        decided.rows.num_rows,
        decided.replace.num_rows,
    )
    out = decided.rows
    if sort_by is not None and out.num_rows > 1:  # one contiguous run per partition value
        out = out.sort_by([(sort_by, "ascending")]).combine_chunks()
    files = write_data_files(table, out) if out.num_rows else []
    return files, key_filter(rule.key, decided.replace)


def stage_merge(
    tx: Transaction,
    table: Table,
    rows: pa.Table,
    rule: merge.MergeRule,
    props: dict[str, str],
    sort_by: str | None = None,
    scope: tuple[BooleanExpression, pc.Expression] | None = None,
) -> None:
    """Plan against ``table`` (the snapshot ``tx`` is based on) and stage the merge."""
    planned_on = table.metadata.current_snapshot_id
    files, replace = plan_files(table, rows, rule, sort_by, scope)
    tx._stage((), (AssertSnapshotUnchanged(snapshot_id=planned_on),))  # type: ignore[arg-type]
    with warnings.catch_warnings():  # a delete matching nothing is normal (new keys)
        warnings.filterwarnings("ignore", message=_NO_MATCH, category=UserWarning)
        if scope is not None:  # its own delete: OR-ing it with the keys loses archive rows
            tx.delete(delete_filter=scope[0], snapshot_properties=props)
        stage_overwrite(tx, replace, files, props)
