"""Checks of a parsed job that span sections (run once by :func:`parse_job`).

Each names the key at fault, what was expected and what was found, with a hint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from coordinator.core.controls import check_asserts, where_expression
from coordinator.core.errors import ConfigError

if TYPE_CHECKING:
    from coordinator.core.jobspec import JobSpec, SchemaSpec, StreamSpec, TableSpec

_TEXT_TYPES = ("string", "binary", "int8", "int16", "int32", "int64")


def _check_quarantine_topic(spec: JobSpec) -> None:
    topic = spec.stream.topic
    if spec.live.quarantine_topic == topic:
        raise ConfigError(
            f"key=live.quarantine_topic: expected a topic other than the source "
            f"stream.topic={topic}, found {topic!r} (it would re-inject every quarantined record)",
            hint=f'did you mean "{topic}.seamline-dlq"? (the default when the key is left out)',
        )


def _check_executor(spec: JobSpec) -> None:
    backfill = spec.backfill
    if backfill.ray.address is not None and backfill.executor != "ray":
        raise ConfigError(
            f"key=backfill.ray.address: expected backfill.executor = \"ray\" with a Ray address, "
            f"found executor = {backfill.executor!r}",
            hint='add executor = "ray" to [backfill], or drop [backfill.ray]',
        )


def cross_checks(spec: JobSpec) -> None:
    _check_quarantine_topic(spec)
    _check_executor(spec)
    fields = spec.schema_.fields
    if spec.schema_.event_time not in fields:
        raise ConfigError(
            f"key=schema.event_time: expected one of {list(fields)}, found "
            f"{spec.schema_.event_time!r}"
        )
    for key in [*spec.table.key, *spec.schema_.required]:
        if key not in fields:
            raise ConfigError(
                f"key=table.key/schema.required: unknown column {key!r}",
                hint=f"declare it in [schema.fields] ({', '.join(fields)})",
            )
    version = spec.table.version
    if version is not None and (version not in fields or version in spec.table.key):
        raise ConfigError(
            f"key=table.version: expected a declared column outside table.key, found {version!r}",
            hint=f"name one of [schema.fields] ({', '.join(fields)}), e.g. updated_at",
        )
    _check_delete_when(spec)
    _check_avro(spec.stream)
    _check_kafka_columns(spec.schema_)
    _check_nested(spec)
    _check_catalog(spec.table)
    if spec.table.format == "lance" and not spec.table.uri:
        raise ConfigError("key=table.uri: lance needs a dataset path or URI")
    if spec.table.format == "lance" and spec.table.uri:
        _check_lance_path(spec, spec.table.uri)
    _check_slice_by(spec)
    try:  # columns and typed values of [[backfill.assert]] and [history] where
        check_asserts(spec.backfill.asserts, spec.schema_.arrow_schema())
        where_expression(spec.history.where, spec.schema_.arrow_schema())
    except ValueError as exc:
        raise ConfigError(f"key={exc}") from None
    if spec.backfill.mode == "append" and spec.history.kafka and spec.history.archive:
        raise ConfigError(
            "key=backfill.mode: append mode needs history that cannot overlap, found both "
            "[[history.archive]] and history.kafka = true (an event in both would be written twice)",
            hint='use mode = "merge" with table.key, or one history source',
        )
    if spec.backfill.publish == "atomic" and spec.backfill.mode == "merge":
        raise ConfigError(
            'key=backfill.publish: publish = "atomic" expected mode = "overwrite" or "append", '
            'found mode = "merge" (a merge plan depends on the table at commit time, so its '
            "staged files could not be audited before the publish)",
            hint='use mode = "overwrite", or publish = "slice" with merge',
        )
    if spec.backfill.committer == "coordinator" and spec.backfill.mode != "overwrite":
        raise ConfigError(
            'key=backfill.committer: committer = "coordinator" expected mode = "overwrite", '
            f'found mode = "{spec.backfill.mode}" (a merge is decided against the table at its '
            "own commit; an append batch found again after its commit's snapshot expired could "
            "not be told from one never made: both commit slice by slice)",
            hint='use committer = "worker" with this mode',
        )
    if spec.backfill.committer == "coordinator" and spec.backfill.publish == "atomic":
        raise ConfigError(
            'key=backfill.committer: committer = "coordinator" commits staged slices in batches '
            'as they finish, found publish = "atomic" (which commits all of them once, at the end)',
            hint='drop one of the two: publish = "atomic" already makes one commit',
        )
    if spec.backfill.mode == "merge" and not spec.table.key:
        raise ConfigError(
            "key=table.key: merge mode needs key columns",
            hint='set table.key = ["order_id"] or use mode = "overwrite"',
        )


def _check_delete_when(spec: JobSpec) -> None:
    """``[table] delete_when``: merge mode only, a declared scalar column outside the key and
    the version, and a value of the column's type."""
    marker = spec.table.delete_when
    if marker is None:
        return
    if spec.backfill.mode != "merge":
        raise ConfigError(
            f"key=table.delete_when: tombstones need mode = \"merge\", found "
            f"mode = {spec.backfill.mode!r} (only a merge by key can delete a key)",
            hint='set [backfill] mode = "merge" with table.key, or remove table.delete_when',
        )
    if marker.null_value:
        _check_null_value(spec)
        return
    fields = spec.schema_.fields
    roles = [*spec.table.key, spec.table.version]
    assert marker.field is not None  # the model holds a field when null_value is false
    if marker.field not in fields or marker.field in roles:
        raise ConfigError(
            f"key=table.delete_when.field: expected a declared column outside table.key and "
            f"table.version, found {marker.field!r}",
            hint=f"name one of [schema.fields] ({', '.join(fields)}), e.g. op",
        )
    column = spec.schema_.arrow_schema().field(marker.field).type
    value = marker.equals
    fits = (
        (pa.types.is_boolean(column) and isinstance(value, bool))
        or (pa.types.is_integer(column) and isinstance(value, int) and not isinstance(value, bool))
        or (pa.types.is_string(column) and isinstance(value, str))
    )
    if not fits:
        raise ConfigError(
            f"key=table.delete_when.equals: expected a value of column {marker.field!r} "
            f"({fields[marker.field]}), found {value!r}",
            hint="the marker column must be a string, integer or boolean column",
        )


def _check_null_value(spec: JobSpec) -> None:
    """``delete_when = { null_value = true }``: the key comes from the message key, and a
    null-value message fills every column it must (key, event time, Kafka metadata)."""
    kafka = spec.schema_.kafka
    not_keyed = [k for k in spec.table.key if kafka.get(k, "").split(":")[0] != "key"]
    if not spec.table.key or not_keyed:
        raise ConfigError(
            f"key=table.delete_when.null_value: expected every table.key column to be the "
            f"Kafka message key, found {not_keyed or 'no table.key'} not declared as "
            f'"key" in [schema.kafka] (a null-value message holds nothing else)',
            hint='declare it, e.g. [schema.kafka] order_id = "key" (or "key:json")',
        )
    version = spec.table.version
    if version is not None and version not in kafka:
        raise ConfigError(
            f"key=table.version: expected a [schema.kafka] column with "
            f"table.delete_when.null_value, found {version!r} (a null-value tombstone has no "
            f"value, so its version would be null, the oldest: it could never delete the key)",
            hint='use a column the message itself fills, e.g. [schema.kafka] updated = '
            '"timestamp" or "header:version", or remove table.version',
        )
    filled = {*spec.table.key, spec.schema_.event_time, *kafka}
    empty = sorted(set(spec.schema_.required) - filled)
    if empty:
        raise ConfigError(
            f"key=schema.required: expected only key, event-time or [schema.kafka] columns "
            f"with table.delete_when.null_value, found {empty} (a null-value tombstone has "
            f"no value to fill them)",
            hint=f"remove {empty} from schema.required",
        )
    if spec.schema_.fields[spec.schema_.event_time] == "date":
        raise ConfigError(
            "key=schema.event_time: expected a timestamp column with "
            "table.delete_when.null_value (a tombstone's event time is its Kafka timestamp), "
            "found a date column",
            hint='declare the event time as "timestamp_ms" or "timestamp_us"',
        )


def _check_nested(spec: JobSpec) -> None:
    """Nested columns (list, struct, map) hold values, never keys, times or CSV cells."""
    nested = {f.name for f in spec.schema_.arrow_schema() if pa.types.is_nested(f.type)}
    if not nested:
        return
    roles = [("schema.event_time", spec.schema_.event_time), ("table.version", spec.table.version)]
    roles += [("table.key", k) for k in spec.table.key]
    for key, col in roles:
        if col in nested:
            raise ConfigError(
                f"key={key}: expected a scalar column, found nested column {col!r} "
                f"({spec.schema_.fields[str(col)]})",
                hint="name a string, integer, date or timestamp column",
            )
    for i, archive in enumerate(spec.history.archive):
        if archive.format == "csv":
            raise ConfigError(
                f"key=history.archive[{i}].format: CSV cells cannot hold nested columns, found "
                f"{sorted(nested)}",
                hint='use format = "jsonl" or "parquet" for archives of nested records',
            )


def _check_kafka_columns(schema: SchemaSpec) -> None:
    """``[schema.kafka]`` columns are declared fields of a type their source can fill."""
    for name, source in schema.kafka.items():
        type_name = schema.fields.get(name)
        if type_name is None:
            raise ConfigError(
                f"key=schema.kafka.{name}: expected a column of [schema.fields], found {name!r}",
                hint=f'declare it, e.g. {name} = "string"',
            )
        if source == "timestamp" and not type_name.startswith("timestamp"):
            raise ConfigError(
                f"key=schema.kafka.{name}: expected a timestamp_ms or timestamp_us column for "
                f"the Kafka timestamp, found {type_name!r}"
            )
        if source != "timestamp" and not source.endswith(":json") and type_name not in _TEXT_TYPES:
            raise ConfigError(
                f"key=schema.kafka.{name}: expected a string, binary or integer column for "
                f"{source!r} read as text, found {type_name!r}",
                hint=f'use "{source}:json" to read it as a JSON value of type {type_name}',
            )


def _check_slice_by(spec: JobSpec) -> None:
    """Every archive declares the same ``slice_by`` on a string or integer column (not the
    event time) with values of that column's type."""
    keys = [a.slice_by for a in spec.history.archive]
    if any(k != keys[0] for k in keys):
        raise ConfigError(
            "key=history.archive.slice_by: expected the same slice_by on every archive, found "
            "different ones",
            hint="archive slices of one table must not overlap: declare one slice_by for all",
        )
    slice_by = keys[0] if keys else None
    if slice_by is None:
        return
    fields, col = spec.schema_.fields, slice_by.column
    kind = fields.get(col)
    if kind is None or col == spec.schema_.event_time:
        raise ConfigError(
            f"key=history.archive.slice_by.column: expected a column of [schema.fields] other "
            f"than the event time, found {col!r}",
            hint=f"one of {[f for f in fields if f != spec.schema_.event_time]}",
        )
    want: type = str if kind == "string" else int
    if kind != "string" and not kind.startswith("int"):
        raise ConfigError(
            f"key=history.archive.slice_by.column: expected a string or integer column, found "
            f"{col!r} of type {kind}",
            hint="slice by a string or integer column (tenant, region, shard id)",
        )
    for group in slice_by.groups() or []:
        bad = [v for v in group if type(v) is not want]
        if bad:
            raise ConfigError(
                f"key=history.archive.slice_by.values: expected {want.__name__} values for "
                f"column {col!r} ({kind}), found {bad[0]!r}",
                hint="write the values with the column's type",
            )


def _check_catalog(table: TableSpec) -> None:
    """One way to name the catalog; Iceberg needs one (with a URI its type can take);
    ``[table.storage]`` goes with an ``s3://`` location."""
    legacy = [
        k for k in ("catalog_uri", "catalog_properties", "catalog_name")
        if k in table.model_fields_set
    ]  # fmt: skip
    if table.catalog is not None and legacy:
        raise ConfigError(
            f"key=table.{legacy[0]}: expected either 'catalog' or the older flat catalog keys, "
            "found both",
            hint="move it into table.catalog (uri, name, warehouse, properties)",
        )
    if table.format != "iceberg":
        if table.catalog is not None:
            raise ConfigError(
                f"key=table.catalog: expected no catalog for format {table.format!r}",
                hint="a Lance dataset is found by table.uri alone",
            )
        if table.storage.is_set() and not (table.uri or "").startswith("s3://"):
            raise ConfigError(
                "key=table.storage: expected an s3:// table.uri with [table.storage], found a "
                "local path",
                hint='e.g. uri = "s3://bucket/orders.lance"',
            )
        return
    spec = table.catalog_spec()
    if not table.identifier or spec is None:
        raise ConfigError(
            "key=table: iceberg needs 'identifier' and a catalog",
            hint='catalog = { type = "sql", uri = "sqlite:///catalog.db" } or '
            '{ type = "rest", uri = "http://127.0.0.1:8181" }',
        )
    spec.check_uri()


def _check_avro(stream: StreamSpec) -> None:
    """``format = "avro"`` takes exactly one schema source; other formats take no ``avro``."""
    if stream.format != "avro":
        if stream.avro is not None:
            raise ConfigError(
                f"key=stream.avro: expected no Avro settings for format {stream.format!r}",
                hint='set [stream] format = "avro" or remove [stream.avro]',
            )
        return
    avro = stream.avro
    given = 0 if avro is None else (avro.schema_file is not None) + (avro.registry_url is not None)
    if given != 1:
        raise ConfigError(
            f"key=stream.avro: expected exactly one of schema_file and registry_url, found {given}",
            hint='e.g. [stream.avro] schema_file = "orders.avsc"',
        )


def _check_lance_path(spec: JobSpec, uri: str) -> None:
    """Refuse a local Lance path of ``/`` or an existing non-empty directory that is not a
    Lance dataset: seamline deletes and rewrites what the path holds."""
    if "://" in uri and not uri.startswith("file://"):
        return
    path = spec.resolve(uri.removeprefix("file://")).resolve()
    if path.parent == path:
        raise ConfigError(
            f"key=table.uri: expected a Lance dataset path, found the root directory {str(path)!r}",
            hint="point table.uri at a new folder or an existing Lance dataset",
        )
    if path.is_file() or (
        path.is_dir() and any(path.iterdir()) and not (path / "_versions").is_dir()
    ):
        raise ConfigError(
            f"key=table.uri: expected a new folder or a Lance dataset, found {str(path)!r} "
            "holding other files",
            hint="point table.uri at a new folder or an existing Lance dataset",
        )
