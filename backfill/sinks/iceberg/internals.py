"""The ONE module of seamline that relies on pyiceberg internals (pinned pyiceberg 0.12).

Everything else in ``backfill.sinks.iceberg`` uses pyiceberg's public API only. What is here,
and why (each piece is pinned by ``tests/unit/test_iceberg_internals.py``, which fails loudly
when pyiceberg changes it):

* :func:`write_data_files`: Parquet data files written ONCE per slice or live batch, not
  committed, so a conflict retry re-commits only metadata (pyiceberg's public ``append`` /
  ``overwrite`` write the files again on every call). It uses ``_dataframe_to_data_files``
  (private) as the general path, and ``write_file`` / ``bin_pack_arrow_table`` / ``WriteTask``
  (importable, undocumented) for the fast path: rows sorted by the partition source column
  (``conform`` sorts by event time) hold each day/hour partition as one contiguous run, so the
  files are cut from zero-copy slices in one pass instead of one filter pass per partition.
* :class:`CachedTransaction`: pyiceberg recomputes ``Transaction.table_metadata`` (a deep copy
  of the whole metadata plus every staged update) on each access, ~30 times per overwrite, and
  the copy grows with the snapshot count. The subclass caches it per staged-update state
  (reads the private ``_table`` / ``_updates``). Measured with ``bench/backfill.py``.

:func:`data_file_to_json` / :func:`data_file_from_json`: a staged (written, uncommitted) data
file as plain JSON for the state store (write-audit-publish), rebuilt with
``DataFile.from_args`` (public) from the positional fields ``DataFile`` exposes as properties.

:func:`stage_overwrite` uses public API only (``Transaction.delete``, ``update_snapshot``).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import BooleanExpression
from pyiceberg.io.pyarrow import _dataframe_to_data_files, bin_pack_arrow_table, write_file
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
from pyiceberg.table import Table, TableProperties, Transaction, WriteTask
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.transforms import DayTransform, HourTransform
from pyiceberg.typedef import Record
from pyiceberg.utils.properties import property_as_bool, property_as_int

log = logging.getLogger(__name__)


class CachedTransaction(Transaction):
    """A ``Transaction`` whose ``table_metadata`` is computed once per staged-update state."""

    def __init__(self, table: Table) -> None:
        super().__init__(table, autocommit=False)
        self._cache: tuple[Any, Any, TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        """The base metadata with the staged updates applied (cached; both are immutable)."""
        base, updates = self._table.metadata, self._updates
        cached = self._cache
        if cached is not None and cached[0] is base and cached[1] is updates:
            return cached[2]
        meta = super().table_metadata
        self._cache = (base, updates, meta)
        return meta


def _contiguous_partitions(table: Table, rows: pa.Table) -> list[tuple[Any, pa.Table]] | None:
    """``(partition value, rows)`` runs when the spec is one day/hour field over sorted rows;
    ``None`` when that does not hold (the caller falls back to pyiceberg's split)."""
    spec, schema = table.spec(), table.schema()
    if len(spec.fields) != 1 or rows.num_rows == 0:
        return None
    field = spec.fields[0]
    if not isinstance(field.transform, DayTransform | HourTransform):
        return None
    source = schema.find_field(field.source_id)
    values = field.transform.pyarrow_transform(source.field_type)(rows[source.name])
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if values.null_count:
        return None
    if rows.num_rows > 1:
        if not pc.all(pc.less_equal(values[:-1], values[1:])).as_py():
            return None
        change = pc.indices_nonzero(pc.not_equal(values[:-1], values[1:])).to_pylist()
    else:
        change = []
    starts = [0, *(i + 1 for i in change)]
    ends = [*starts[1:], rows.num_rows]
    return [(values[s].as_py(), rows.slice(s, e - s)) for s, e in zip(starts, ends, strict=True)]


def write_data_files(table: Table, rows: pa.Table) -> list[DataFile]:
    """Parquet data files for ``rows`` (already conformed to the table schema), not committed.

    No rows, no files (pyiceberg's bin packing divides by the row count): a live batch whose
    records were all quarantined still commits its offsets.
    """
    if rows.num_rows == 0:
        return []
    meta = table.metadata
    runs = _contiguous_partitions(table, rows)
    if runs is None:
        return list(_dataframe_to_data_files(meta, rows, table.io))
    from pyiceberg.io.pyarrow import pyarrow_to_schema

    target: int = property_as_int(  # type: ignore[assignment]
        meta.properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
    )
    spec, schema = meta.spec(), meta.schema()
    task_schema = pyarrow_to_schema(
        rows.schema, name_mapping=schema.name_mapping, format_version=meta.format_version
    )
    write_uuid, counter = uuid.uuid4(), iter(range(1 << 62))
    tasks = (
        WriteTask(
            write_uuid=write_uuid,
            task_id=next(counter),
            record_batches=batches,
            partition_key=PartitionKey(
                field_values=[PartitionFieldValue(field=spec.fields[0], value=value)],
                partition_spec=spec,
                schema=schema,
            ),
            schema=task_schema,
        )
        for value, part in runs
        for batches in bin_pack_arrow_table(part, target)
    )
    return list(write_file(io=table.io, table_metadata=meta, tasks=tasks))


def stage_append(tx: Transaction, files: list[DataFile], props: dict[str, str]) -> None:
    """Stage "add ``files``" in ``tx`` (append mode: nothing is deleted)."""
    with tx.update_snapshot(snapshot_properties=props).fast_append() as append:
        for data_file in files:
            append.append_data_file(data_file)


def stage_overwrite(
    tx: Transaction,
    scope: BooleanExpression,
    files: list[DataFile],
    props: dict[str, str],
) -> None:
    """Stage "delete ``scope``, add ``files``" in ``tx`` (what ``Transaction.overwrite`` does,
    with data files written beforehand), merging manifests when the table asks for it."""
    tx.delete(delete_filter=scope, snapshot_properties=props)
    merge = property_as_bool(
        tx.table_metadata.properties,
        TableProperties.MANIFEST_MERGE_ENABLED,
        TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT,
    )  # merged manifests keep the manifest list (and every later commit) small
    update = tx.update_snapshot(snapshot_properties=props)
    with update.merge_append() if merge else update.fast_append() as append:
        for data_file in files:
            append.append_data_file(data_file)


#: The ``DataFile`` fields a staged file is rebuilt from (all of them in format v1/v2).
_STAT_FIELDS = (
    "column_sizes",
    "value_counts",
    "null_value_counts",
    "nan_value_counts",
    "lower_bounds",
    "upper_bounds",
)


def _plain(value: Any) -> Any:
    """JSON-able copy: bytes as ``{"hex": ...}``, int-keyed maps as ``[[key, value], ...]``."""
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return [[k, _plain(v)] for k, v in value.items()]
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"hex"}:
        return bytes.fromhex(value["hex"])
    return value


def data_file_to_json(data_file: DataFile) -> dict[str, Any]:
    """A written, uncommitted data file as JSON (its stats and partition values included)."""
    partition = data_file.partition
    return {
        "file_path": data_file.file_path,
        "file_format": data_file.file_format.name,
        "partition": [partition[i] for i in range(len(partition))],
        "record_count": data_file.record_count,
        "file_size_in_bytes": data_file.file_size_in_bytes,
        "spec_id": getattr(data_file, "_spec_id", None),  # unset on some write paths
        "split_offsets": data_file.split_offsets,
        **{name: _plain(getattr(data_file, name)) for name in _STAT_FIELDS},
    }


def data_file_from_json(doc: dict[str, Any], meta: TableMetadata) -> DataFile:
    """Inverse of :func:`data_file_to_json`, for the table whose metadata is ``meta`` (its
    format version; its default spec when the file recorded none)."""
    stats = {
        name: None if doc[name] is None else {int(k): _unplain(v) for k, v in doc[name]}
        for name in _STAT_FIELDS
    }
    return DataFile.from_args(
        _table_format_version=meta.format_version,
        content=DataFileContent.DATA,
        file_path=doc["file_path"],
        file_format=FileFormat[doc["file_format"]],
        partition=Record(*doc["partition"]),
        record_count=doc["record_count"],
        file_size_in_bytes=doc["file_size_in_bytes"],
        sort_order_id=None,
        spec_id=meta.default_spec_id if doc["spec_id"] is None else doc["spec_id"],
        equality_ids=None,
        key_metadata=None,
        split_offsets=doc["split_offsets"],
        **stats,
    )
