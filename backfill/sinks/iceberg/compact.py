"""Small-file compaction of an Iceberg table under live traffic (DESIGN §6, issue 15 item 5).

A live consumer commits a few rows at a time, so a partition ends up with thousands of tiny
data files and reading the table back (reconcile) pays per file. :func:`compact_table` rewrites
each partition's small files into one file (or a few, at the table's target file size), many
partitions per commit (:func:`pack`):

* the rows are read from exactly those files (``ArrowScan`` over their scan tasks) and written
  back unchanged, lineage columns included, so checksums and offset coverage are unchanged;
* the commit is an overwrite that deletes exactly those files and adds the new ones, based on
  the snapshot the files were planned from: the catalog refuses it if ``main`` moved
  (``AssertRefSnapshotId``; pyiceberg's own rebase is off, see ``live.NO_LIBRARY_RETRY``), and
  pyiceberg refuses it if any of the files is no longer in that snapshot. A refused commit
  changed nothing: its new files are deleted, the table reloaded and the partition re-planned.

A live append racing a compaction therefore either lands first (the compaction re-plans) or
loses its compare-and-set and retries on the compacted head; no row is lost or doubled.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table

from backfill.sinks import common
from backfill.sinks.iceberg.internals import write_data_files
from backfill.sinks.iceberg.live import ensure_no_library_retry

log = logging.getLogger(__name__)

#: Snapshot summary property marking a compaction (not a seamline commit token).
COMPACTION_PROPERTY = "seamline-maintenance"

PartitionKey = tuple[int, tuple[Any, ...]]


def small_file_groups(
    table: Table, policy: common.MaintenancePolicy
) -> dict[PartitionKey, list[FileScanTask]]:
    """Per ``(spec id, partition values)`` of the default spec: the small data files, when
    there are at least ``policy.min_files`` of them and none carries delete files."""
    groups: dict[PartitionKey, list[FileScanTask]] = defaultdict(list)
    spec_id = table.metadata.default_spec_id
    blocked: set[PartitionKey] = set()
    for task in table.scan().plan_files():
        f = task.file
        key: PartitionKey = (f.spec_id, tuple(f.partition[i] for i in range(len(f.partition))))
        if task.delete_files or f.spec_id != spec_id:
            blocked.add(key)
        elif f.file_size_in_bytes < policy.small_file_bytes:
            groups[key].append(task)
    return {
        k: sorted(v, key=lambda t: t.file.file_path)
        for k, v in groups.items()
        if k not in blocked and len(v) >= policy.min_files
    }


def _read(table: Table, tasks: Iterable[FileScanTask]) -> pa.Table:
    scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
    return scan.to_table(list(tasks))


def _commit_rewrite(table: Table, tasks: list[FileScanTask], added: list[DataFile]) -> None:
    props = {COMPACTION_PROPERTY: "compact", "seamline-compacted-files": str(len(tasks))}
    with (
        table.transaction() as txn,
        txn.update_snapshot(snapshot_properties=props).overwrite() as rewrite,
    ):
        for task in tasks:
            rewrite.delete_data_file(task.file)
        for data_file in added:
            rewrite.append_data_file(data_file)


def _delete_files(table: Table, files: list[DataFile]) -> None:
    """Remove data files of a commit the catalog certainly refused (never referenced)."""
    for f in files:
        try:
            table.io.delete(f.file_path)
        except Exception as exc:  # an orphan, harmless: orphan cleanup can remove it
            log.warning("could not delete an unreferenced compaction file %s: %s", f.file_path, exc)


#: Input bytes one compaction commit rewrites at most (bounds the rows held in memory); the
#: partitions of a round are packed into as few commits as this allows.
COMMIT_BYTES = 256 * 1024 * 1024


def compact_files(table: Table, tasks: list[FileScanTask]) -> tuple[int, int, int]:
    """Rewrite ``tasks``' files (of one or many partitions) in ONE commit: each partition's
    rows into one file (or a few, at target size); ``(removed, added, rows)``.

    Raises ``CommitFailedException`` / ``ValidationException`` when the table moved underneath
    (certainly not applied; the new files are already deleted)."""
    rows = _read(table, tasks)
    expected = sum(t.file.record_count for t in tasks)
    if rows.num_rows != expected:
        raise ValidationException(
            f"table={table.name()}: compaction read {rows.num_rows} rows, expected {expected} "
            "(the files' record counts); nothing committed"
        )
    added = write_data_files(table, rows.combine_chunks())
    try:
        _commit_rewrite(table, tasks, added)
    except (CommitFailedException, ValidationException):
        _delete_files(table, added)
        raise
    return len(tasks), len(added), rows.num_rows


def pack(
    groups: dict[PartitionKey, list[FileScanTask]], limit: int = COMMIT_BYTES
) -> list[list[list[FileScanTask]]]:
    """The partitions' file groups packed into commits of at most ``limit`` input bytes (a
    partition larger than ``limit`` is a commit of its own; partitions are never split)."""
    commits: list[list[list[FileScanTask]]] = []
    size = 0
    for tasks in groups.values():
        n = sum(t.file.file_size_in_bytes for t in tasks)
        if not commits or size + n > limit:
            commits.append([])
            size = 0
        commits[-1].append(tasks)
        size += n
    return commits


def compact_table(
    table: Table, policy: common.MaintenancePolicy, attempts: int = 5
) -> common.Compaction:
    """Compact every partition with enough small files; a partition whose commit is refused
    (a concurrent commit) is re-planned on the reloaded table, up to ``attempts`` rounds."""
    done = _compact_rounds(table, policy, attempts)
    if done.files_removed:
        drop_delete_manifests(table)
    return done


def drop_delete_manifests(table: Table) -> bool:
    """Commit an empty snapshot when the current one holds manifests of deleted entries only.

    A rewrite leaves a manifest listing every removed file as DELETED; scan planning reads it
    on every scan until a later commit leaves it out (the next live commit would). Measured
    by ``bench/maintain.py`` at 1,000 live commits: it was most of the reconcile time left
    after compaction. The empty commit adds and removes nothing (no validation needed); a
    refused one is harmless (the next commit drops the manifest). Returns whether it committed.
    """
    table.refresh()
    current = table.current_snapshot()
    if current is None:
        return False
    manifests = current.manifests(table.io)
    if not any(not m.has_added_files() and not m.has_existing_files() for m in manifests):
        return False
    try:
        with (
            table.transaction() as txn,
            txn.update_snapshot(
                snapshot_properties={COMPACTION_PROPERTY: "manifests"}
            ).fast_append(),
        ):
            pass
    except (CommitFailedException, ValidationException) as exc:
        log.info("dropping delete-only manifests skipped this round: %s", exc)
        return False
    return True


def _compact_rounds(
    table: Table, policy: common.MaintenancePolicy, attempts: int
) -> common.Compaction:
    """One commit per :func:`pack`-ed group of partitions, not one per partition: a live
    consumer spread over hundreds of day partitions (late events) otherwise spends its whole
    cadence committing compactions one partition at a time, each rewriting the metadata
    (measured: 278 compaction commits in 406 s against 50 live appends under CPU load)."""
    done = common.Compaction()
    for _ in range(attempts):
        table.refresh()
        ensure_no_library_retry(table)
        groups = small_file_groups(table, policy)
        if not groups:
            return done
        conflicted = False
        for partitions in pack(groups, COMMIT_BYTES):
            tasks = [t for group in partitions for t in group]
            try:
                removed, added, rows = compact_files(table, tasks)
            except (CommitFailedException, ValidationException) as exc:
                log.info(
                    "compaction of %d partitions refused, re-planning: %s", len(partitions), exc
                )
                done = done.plus(conflicts=1)
                conflicted = True
                break
            done = done.plus(
                partitions=len(partitions), files_removed=removed, files_added=added, rows=rows
            )
        if not conflicted:
            return done
    log.info("compaction left partitions for the next round after %d conflicts", done.conflicts)
    return done
