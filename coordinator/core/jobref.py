"""The job file's JSON schema and its Markdown reference, both generated from the model.

``seamline schema`` prints :func:`job_file_schema`; the README's job-file reference is
:func:`job_reference_markdown` (``tests/unit/test_cli_reference.py`` fails when they drift, and
when a key of the model has no description here).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel

from coordinator.core.catalogspec import CatalogSpec, StorageSpec
from coordinator.core.controls import AssertSpec, WhereSpec
from coordinator.core.fieldtypes import FIELD_TYPES
from coordinator.core.jobspec import (
    ArchiveSpec,
    AvroSpec,
    BackfillSpec,
    HistorySpec,
    JobSpec,
    LiveSpec,
    RaySpec,
    SchemaSpec,
    SecuritySpec,
    SliceBySpec,
    StateSpec,
    StreamSpec,
    TableSpec,
    TransformSpec,
)

log = logging.getLogger(__name__)

# (TOML section header, model): the order of the reference.
SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("[stream]", StreamSpec),
    ("[stream.security]", SecuritySpec),
    ("[stream.avro]", AvroSpec),
    ("[schema]", SchemaSpec),
    ("[table]", TableSpec),
    ("[table.catalog]", CatalogSpec),
    ("[table.storage]", StorageSpec),
    ("[history]", HistorySpec),
    ("[[history.archive]]", ArchiveSpec),
    ("[history.archive.slice_by]", SliceBySpec),
    ("[[history.where]]", WhereSpec),
    ("[transform]", TransformSpec),
    ("[backfill]", BackfillSpec),
    ("[[backfill.assert]]", AssertSpec),
    ("[backfill.ray]", RaySpec),
    ("[live]", LiveSpec),
    ("[state]", StateSpec),
)

DESCRIPTIONS: dict[str, str] = {
    "stream.bootstrap": "Kafka bootstrap servers, `host:port[,host:port]`.",
    "stream.topic": "The topic to onboard (history below the cut, live from it).",
    "stream.group": "Consumer group id of the live consumer (default: `seamline-live-<job id>`); "
    "offsets are read from the table, never from the group.",
    "stream.format": "Record encoding (the `stream/decode` registry).",
    "stream.security": "The `[stream.security]` table below.",
    "stream.avro": "For `format = \"avro\"`: the `[stream.avro]` table below.",
    "stream.avro.schema_file": "Writer schema (`.avsc`) of plain Avro message bodies.",
    "stream.avro.registry_url": "Schema Registry URL for the Confluent wire format (a secret: "
    "it may carry credentials).",
    "stream.security.protocol": "librdkafka `security.protocol`.",
    "stream.security.sasl_mechanism": "librdkafka `sasl.mechanism`.",
    "stream.security.sasl_username": "SASL user name.",
    "stream.security.sasl_password": "SASL password (a secret: never printed); use "
    '`"${KAFKA_PASSWORD}"`.',
    "stream.security.ssl_ca_location": "CA certificate file for SSL.",
    "schema.fields": "Table of `column = \"type\"`, in order; types: "
    + ", ".join(f"`{name}`" for name in [*FIELD_TYPES, "decimal(P,S)"])
    + ", and nested `list<T>`, `struct<name: T, ...>`, `map<string, T>` (any nesting).",
    "schema.required": "Columns that must not be null (a record without them is quarantined).",
    "schema.event_time": "The event-time column (buckets archive slices; never the seam).",
    "schema.non_finite": "NaN/Infinity in float columns: quarantine the record, or keep it.",
    "schema.kafka": "Columns filled from Kafka metadata, not the value: `col = \"key\"` (the "
    "message key), `\"header:NAME\"` (the last header of that name), either read as text "
    "(string, binary or integer column) or with `:json` as a JSON value of the column's type, "
    "or `\"timestamp\"` (the record timestamp, a timestamp column). Live, history and "
    "reconcile read them alike; usable in `[table] key`.",
    "table.format": "`iceberg` or `lance`.",
    "table.identifier": "Iceberg: `namespace.table`.",
    "table.catalog": "Iceberg: the catalog, any pyiceberg type (below; an inline table "
    '`catalog = { type = "rest", uri = "http://…" }` or a `[table.catalog]` section).',
    "table.storage": "S3-compatible object storage of the Iceberg warehouse or the Lance "
    "dataset (`[table.storage]`, below).",
    "table.catalog.type": "`sql` (embedded default), `rest`, `hive`, `glue`, `dynamodb`, "
    "`bigquery` or `in-memory`, handed to `pyiceberg.catalog.load_catalog`.",
    "table.catalog.name": "The catalog's name.",
    "table.catalog.uri": "`sql`: an SQLAlchemy URL; `rest`: `http(s)://`; `hive`: "
    "`thrift://`; other types take none (a secret).",
    "table.catalog.warehouse": "Warehouse location (`file://`, `s3://`, or a path relative to "
    "the job file); a REST catalog usually has its own.",
    "table.catalog.credential": "REST OAuth2 `client_id:client_secret` (a secret).",
    "table.catalog.token": "REST bearer token (a secret).",
    "table.catalog.properties": "Any other pyiceberg catalog property, passed through "
    "(secrets).",
    "table.storage.endpoint": "S3 endpoint URL (`http(s)://`; omit for AWS S3).",
    "table.storage.region": "S3 region.",
    "table.storage.access_key_id": "S3 access key id (a secret).",
    "table.storage.secret_access_key": "S3 secret access key (a secret); use "
    '`"${S3_SECRET_ACCESS_KEY}"`.',
    "table.storage.session_token": "S3 session token (a secret).",
    "table.storage.path_style": "Path-style addressing (MinIO, S3Proxy and most "
    "S3-compatible servers).",
    "table.storage.commit_lock": "Lance: `host` serialises the dataset's commits through a "
    "lock file on this host, for servers whose conditional put is not atomic (S3Proxy); every "
    "writer must then run on this host.",
    "table.catalog_name": "Iceberg: the catalog's name (pyiceberg SQL catalog).",
    "table.catalog_uri": "Iceberg (older form of `catalog`): SQL catalog URL, e.g. `sqlite:///catalog.db` or "
    "`postgresql+psycopg://user:${PGPASSWORD}@host/db` (a secret).",
    "table.warehouse": "Iceberg: warehouse location (`file:///…`, `s3://…`).",
    "table.catalog_properties": "Iceberg: extra catalog properties (e.g. `s3.endpoint`), "
    "treated as secrets.",
    "table.uri": "Lance: dataset path (relative to the job file) or URI.",
    "table.key": "Business key columns (needed by `mode = \"merge\"`; checked unique).",
    "table.version": "Merge mode: the column deciding which version of a key is newest "
    "(e.g. `updated_at`; null is oldest); ties and an unset version fall back to source order "
    "(archive < Kafka, then partition, then offset).",
    "table.strict_keys": "Merge mode: refuse a batch holding one key twice (`DuplicateKeyError`) "
    "instead of keeping its newest version.",
    "table.delete_when": "Merge mode: the declared tombstone, an inline table "
    "`{ field = \"op\", equals = \"d\" }`: a record whose `field` equals `equals` (a string, "
    "integer or boolean of that column's type) deletes its key. It is a version of the key "
    "under the same order; the table keeps it as the key's marker row with "
    "`_seamline_deleted = true`, so an older version arriving later cannot revive the key; "
    "readers filter `NOT _seamline_deleted`. Or `{ null_value = true }` (Kafka's compaction "
    "idiom): a message with a key and a null value deletes that key (table.key must be the "
    "message key, `[schema.kafka] col = \"key\"`; the marker row's event time is the record's "
    "Kafka timestamp, its other value columns null). Without it a null value is quarantined.",
    "table.partition_by": "Iceberg partitioning of the event-time column.",
    "history.kafka": "Backfill the topic's retained records below the cut. `false` "
    "(archive-only) needs a topic with no retained records: seamline refuses to cut otherwise.",
    "history.archive": "Archive sources, one `[[history.archive]]` table each (below).",
    "history.archive.glob": "Files of this archive, relative to the job file; must match at "
    "least one file (else exit 3).",
    "history.archive.format": "`parquet`, `csv` or `jsonl`.",
    "history.archive.bucket": "Archive slice width by event time.",
    "history.archive.slice_by": "Custom-key slices: `{column, values}` (below); one slice per "
    "key value (or group) per bucket. Every archive declares the same.",
    "history.archive.slice_by.column": "A string or integer column of `[schema.fields]` (not "
    "the event time).",
    "history.archive.slice_by.values": "Key values, one slice each (a list inside is one slice "
    "of several values); only these values are backfilled. Left out: every non-null value "
    "found in the archive files (Parquet statistics, else a distinct scan).",
    "history.where": "Row filter: `[[history.where]]` conditions that must all hold (below); "
    "the reconciler applies the same filter to the source.",
    "history.where.column": "A column of `[schema.fields]`.",
    "history.where.op": "`==`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`, `is null`, "
    "`is not null`.",
    "history.where.value": "A value of the column's type (a list for `in`/`not in`; none for "
    "the null tests).",
    "transform.function": "User code `module:function`, Arrow table in and out, applied "
    "identically on both sides.",
    "backfill.mode": "`overwrite` the slice's scope, `merge` by `table.key`, or `append` "
    "(immutable history that cannot overlap: one history source only).",
    "backfill.publish": "`slice` (each slice visible once committed) or `atomic` "
    "(write-audit-publish: slices are staged invisibly, audited, then published in one "
    "commit; overwrite or append mode).",
    "backfill.assert": "Per-slice assertions, `[[backfill.assert]]` tables (below), checked "
    "before a slice commits.",
    "backfill.assert.check": "`min_rows`, `min_rows_per_day`, `max_null_rate`, `range`, "
    "`unique` or `custom`.",
    "backfill.assert.column": "The column checked (`max_null_rate`, `range`, `unique`).",
    "backfill.assert.min": "Lower bound (`min_rows`, `min_rows_per_day`, `range`).",
    "backfill.assert.max": "Upper bound (`max_null_rate`, `range`).",
    "backfill.assert.function": "`module:function(table)` for `custom`: returns None to pass "
    "or a string saying what was found.",
    "backfill.assert.name": "A name shown in errors, `status` and the report.",
    "backfill.slice_records": "Kafka offsets per history slice.",
    "backfill.concurrency": "Slices written in parallel (worker processes).",
    "backfill.lag_threshold": "Pause the backfill while live lag exceeds this many records.",
    "backfill.max_attempts": "Attempts per slice before the run is partial (exit 5).",
    "backfill.executor": "Where slices run: `process` (local worker processes) or `ray` "
    "(Ray tasks, `pip install seamline[ray]`; `[backfill.ray]` below). Not `seamline run "
    "--executor module:function`, which picks the slice function run there.",
    "backfill.ray": "For `executor = \"ray\"`: the `[backfill.ray]` table below.",
    "backfill.committer": "Who commits history slices: `worker` (each worker commits its own "
    "slice) or `coordinator` (workers stage their data files; the coordinator alone commits "
    "them, up to `commit_batch_slices` slices per table commit, each slice's token recorded; "
    "overwrite mode).",
    "backfill.commit_batch_slices": "For `committer = \"coordinator\"`: at most this many "
    "staged slices per table commit.",
    "backfill.commit_batch_seconds": "For `committer = \"coordinator\"`: a staged slice waits "
    "at most this long for its batch to fill before the batch is committed.",
    "backfill.ray.address": "Ray cluster to run slices on: `ray://head:10001` (Ray Client, e.g. "
    "KubeRay's head service), `head:6379` or `auto`; left out: a local Ray started for the run "
    "(`concurrency` CPUs). No credentials (it is logged).",
    "live.batch_records": "Records per live micro-batch at most.",
    "live.batch_seconds": "Seconds per live micro-batch at most.",
    "live.quarantine_topic": "Dead-letter topic (default `<topic>.seamline-dlq`).",
    "live.expire_snapshots_every": (
        "Maintenance cadence: the live consumer compacts and expires snapshots (Lance: removes "
        "versions) every N live commits; `seamline run` maintains the table once N versions or "
        "snapshots passed since the last time (0: never)."
    ),
    "live.keep_snapshots": "Snapshots (Lance: versions) always kept when expiring.",
    "live.min_commit_seconds": "Minimum seconds between two live commits (batches grow "
    "under load instead).",
    "live.max_commit_share": "Largest share of the live consumer's time spent committing: "
    "after a commit that took T seconds the next starts no sooner than T / share after it "
    "started (slow merge commits leave room for the backfill; batches grow instead).",
    "state.url": "State store URL (SQLite or PostgreSQL, a secret); default "
    "`sqlite:///.seamline/<job id>.db` next to the job file.",
}


def job_file_schema() -> dict[str, Any]:
    """The JSON schema of a job file (TOML layout: ``[job] id`` instead of ``job_id``)."""
    schema = JobSpec.model_json_schema(by_alias=True)
    props = schema["properties"]
    for internal in ("job_id", "base_dir"):
        props.pop(internal, None)
    props["job"] = {
        "type": "object",
        "title": "Job",
        "description": "`id`: the job id (default: the job file's name without .toml).",
        "properties": {"id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"}},
        "additionalProperties": False,
    }
    schema["required"] = [r for r in schema.get("required", []) if r not in ("job_id", "base_dir")]
    schema["title"] = "seamline job file"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _type_text(prop: dict[str, Any]) -> str:
    options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    one = options[0] if len(options) == 1 else prop
    if "enum" in one:
        return "one of " + ", ".join(f"`{v}`" for v in one["enum"])
    if "const" in one:
        return f"`{one['const']}`"
    kind = {"integer": "int", "number": "float", "boolean": "bool", "string": "string"}.get(
        one.get("type", ""), "table"
    )
    if one.get("type") == "array":
        kind = "list of " + _type_text(one.get("items", {})).replace("table", "tables")
    if one.get("format") == "password":
        kind = "string (secret)"
    if one.get("type") == "object" and "additionalProperties" in one:
        kind = "table of " + _type_text(one["additionalProperties"])
    bounds = [f"{op} {one[key]}" for key, op in
              (("exclusiveMinimum", ">"), ("minimum", ">="), ("maximum", "<=")) if key in one]  # fmt: skip
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _default_text(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return "see below"
    return "none" if default is None else f"`{json.dumps(default)}`"


def _section_rows(prefix: str, model: type[BaseModel]) -> list[str]:
    props = model.model_json_schema(by_alias=True)["properties"]
    rows = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        text = DESCRIPTIONS[f"{prefix}.{key}"]
        rows.append(f"| `{key}` | {_type_text(props[key])} | {_default_text(model, name)} | {text} |")
    return rows


def job_reference_markdown() -> str:
    """Every key of the job file, section by section (type, default, meaning)."""
    out = [
        "Every string value may use `${NAME}` (replaced by the environment variable, which must",
        "be set; secrets so given are never printed). Unknown keys are refused (exit 3). Paths",
        "are relative to the job file's folder. `[job]` holds `id` (default: the file's name).",
        "",
    ]
    for header, model in SECTIONS:
        prefix = header.strip("[]")
        out += [f"`{header}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        out += [*_section_rows(prefix, model), ""]
    return "\n".join(out).rstrip() + "\n"


def missing_descriptions() -> list[str]:
    """Model keys without a description here (the reference must cover every key)."""
    missing = []
    for header, model in SECTIONS:
        prefix = header.strip("[]")
        for name, field in model.model_fields.items():
            key = f"{prefix}.{field.alias or name}"
            if key not in DESCRIPTIONS:
                missing.append(key)
    return missing
