"""Avro records (``[stream] format = "avro"``), one writer schema from a file or a Schema Registry.

Two framings, chosen in ``[stream.avro]``:

- ``schema_file``: every message value is the Avro binary encoding of one record written with
  the schema in that ``.avsc`` file (no header).
- ``registry_url``: the Confluent wire format, magic byte ``0`` then a 4-byte big-endian schema
  id, then the Avro body; the writer schema is fetched once per id from the Schema Registry
  through confluent-kafka's ``SchemaRegistryClient`` (``GET /schemas/ids/{id}``). No registry
  server can be installed on the machines this is built on (it is neither on PyPI nor on Maven
  Central), so the tests serve that endpoint from a minimal HTTP server.

A record's fields are matched to the job's schema by name and checked by the same per-value
coercion as JSON (:mod:`stream.decode.coerce`), Avro logical values first turned into the
forms it takes (dates and timestamps as ISO-8601, bytes as base64, decimals as ``Decimal``).
A record that does not decode is quarantined; there is one path, so the result never depends
on the batch. A registry that cannot be reached is not a record's fault: it raises
``SourceError`` instead of quarantining everything.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa

from coordinator.core.errors import ConfigError, SourceError
from coordinator.core.jobspec import JobSpec
from coordinator.core.logs import redact
from coordinator.core.values import Side
from stream.decode.base import ColumnsDecoder, Quarantined, add_lineage
from stream.decode.coerce import RecordError, field_coercer
from stream.decode.json import build_rows
from stream.decode.kafka_meta import attach, value_schema
from stream.decode.transform import Transform, apply_transform

log = logging.getLogger(__name__)

MAGIC = 0
HEADER = 5  # magic byte + 4-byte schema id

_Checks = list[tuple[str, Any, pa.DataType, bool]]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


class AvroDecoder(ColumnsDecoder):
    """Decodes Avro message values into the job's schema (see the module docstring)."""

    format = "avro"

    def __init__(self, *, schema: dict[str, Any] | None = None, registry: Any = None) -> None:
        if (schema is None) == (registry is None):
            raise ValueError("expected exactly one of schema and registry")
        self._schema = fastavro.parse_schema(schema) if schema is not None else None
        self._registry = registry
        self._by_id: dict[int, Any] = {}

    def decode_columns(
        self,
        partitions: Sequence[int],
        offsets: Sequence[int],
        values: Sequence[bytes | None],
        schema: pa.Schema,
        transform: Transform,
        side: Side,
    ) -> tuple[pa.Table, list[Quarantined]]:
        """Rows (as the transform returns them, plus lineage) and quarantined records, in order."""
        checks: _Checks = [
            (f.name, field_coercer(f), f.type, f.nullable) for f in value_schema(schema)
        ]
        rows: list[list[Any]] = []
        ok: list[int] = []
        bad: dict[int, str] = {}
        for i, value in enumerate(values):
            try:
                rows.append(_row(self.read(value), checks))
                ok.append(i)
            except RecordError as exc:
                bad[i] = f"decode: {exc}"
        table, kept, bad = build_rows(rows, ok, bad, value_schema(schema))
        table, attached, bad = attach(table, kept, bad, values, schema)
        kept = kept if attached is None else attached
        out, kept_rows, failed = apply_transform(table, transform)
        if kept_rows is not None:
            bad.update({kept[i]: reason for i, reason in failed.items()})
            kept = [kept[i] for i in kept_rows]
        take = pa.array(kept, pa.int64())
        parts = pa.array(partitions, pa.int32()).take(take)
        offs = pa.array(offsets, pa.int64()).take(take)
        quarantined = [
            Quarantined(partitions[i], offsets[i], bad[i], values[i]) for i in sorted(bad)
        ]
        return add_lineage(out, parts, offs, "kafka", side), quarantined

    def read(self, value: bytes | None) -> dict[str, Any]:
        """One message value as an Avro record (``RecordError`` when it is not one)."""
        if value is None:
            raise RecordError("tombstone (null value)")
        body, writer = self._framed(value)
        buf = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(buf, writer, None)
        except Exception as exc:  # any failure of one record's bytes is that record's
            raise RecordError(f"invalid Avro: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(body):
            raise RecordError(
                f"expected one record of {buf.tell()} bytes, found {len(body)} bytes (trailing data)"
            )
        if not isinstance(record, dict):
            raise RecordError(f"expected an Avro record, found {type(record).__name__}")
        return record

    def _framed(self, value: bytes) -> tuple[bytes, Any]:
        if self._schema is not None:
            return value, self._schema
        if len(value) < HEADER or value[0] != MAGIC:
            raise RecordError(
                "expected the Confluent wire format (magic byte 0, 4-byte schema id), "
                f"found {value[:HEADER]!r}"
            )
        return value[HEADER:], self._writer_schema(int.from_bytes(value[1:HEADER], "big"))

    def _writer_schema(self, schema_id: int) -> Any:
        found = self._by_id.get(schema_id)
        if found is None:
            found = self._by_id[schema_id] = _fetch(self._registry, schema_id)
        if isinstance(found, RecordError):
            raise found
        return found


def _fetch(registry: Any, schema_id: int) -> Any:
    """The parsed writer schema ``schema_id``; a ``RecordError`` (cached) if it is unusable."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        registered = registry.get_schema(schema_id)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            return RecordError(f"schema id={schema_id} is not in the registry")
        raise SourceError(
            f"schema registry: fetching schema id={schema_id} failed: {redact(str(exc))}",
            hint="check [stream.avro] registry_url and that the registry is up",
        ) from None
    except Exception as exc:
        raise SourceError(
            f"schema registry: fetching schema id={schema_id} failed: "
            f"{type(exc).__name__}: {redact(str(exc))}",
            hint="check [stream.avro] registry_url and that the registry is up",
        ) from None
    if registered.schema_type not in (None, "AVRO"):
        return RecordError(f"schema id={schema_id}: expected AVRO, found {registered.schema_type}")
    try:
        return fastavro.parse_schema(json.loads(registered.schema_str))
    except Exception as exc:
        return RecordError(f"schema id={schema_id} is not a valid Avro schema: {exc}")


def _row(record: dict[str, Any], checks: _Checks) -> list[Any]:
    row: list[Any] = []
    for name, check, type_, nullable in checks:
        raw = record.get(name)
        if raw is None:
            if not nullable:
                raise RecordError(f"required field {name!r} is missing or null")
            row.append(None)
            continue
        try:
            row.append(check(_natural(raw, type_), type_))
        except RecordError as exc:
            raise RecordError(f"field {name!r}: {exc}") from None
    return row


def _natural(value: Any, type_: pa.DataType) -> Any:
    """An Avro value in the form the JSON coercion takes for ``type_``.

    Avro records, arrays and maps are already the JSON shapes (dict, list, dict); their
    leaves are converted the same way, recursively.
    """
    if pa.types.is_list(type_) and isinstance(value, list):
        return [None if v is None else _natural(v, type_.value_type) for v in value]
    if pa.types.is_map(type_) and isinstance(value, dict):
        return {k: None if v is None else _natural(v, type_.item_type) for k, v in value.items()}
    if pa.types.is_struct(type_) and isinstance(value, dict):
        fields = {type_.field(i).name: type_.field(i).type for i in range(type_.num_fields)}
        return {
            k: v if v is None or k not in fields else _natural(v, fields[k])
            for k, v in value.items()
        }
    if isinstance(value, datetime):
        if value.tzinfo is not None and pa.types.is_timestamp(type_) and type_.unit == "ms":
            return (value - _EPOCH) // _ONE_MS  # epoch ms, as from ISO-8601: rounded down
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes) and pa.types.is_binary(type_):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def decoder_for_job(job: JobSpec) -> AvroDecoder:
    """The Avro decoder of ``job``'s ``[stream.avro]`` settings (``ConfigError`` if unusable)."""
    settings = job.stream.avro
    if settings is None:
        raise ConfigError('key=stream.avro: format = "avro" needs schema_file or registry_url')
    if settings.schema_file is not None:
        return AvroDecoder(schema=_schema_file(job.resolve(settings.schema_file)))
    from confluent_kafka.schema_registry import SchemaRegistryClient

    assert settings.registry_url is not None  # the job spec holds exactly one of the two
    return AvroDecoder(
        registry=SchemaRegistryClient({"url": settings.registry_url.get_secret_value()})
    )


def _schema_file(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        fastavro.parse_schema(doc)
    except OSError as exc:
        raise ConfigError(
            f"key=stream.avro.schema_file: cannot read {str(path)!r}: {exc.strerror}",
            hint="name an .avsc file, relative to the job file",
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"key=stream.avro.schema_file: expected an Avro schema in {str(path)!r}, found "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(doc, dict) or doc.get("type") != "record":
        raise ConfigError(f"key=stream.avro.schema_file: expected a record schema in {str(path)!r}")
    return doc
