"""Kafka metadata as columns: the message key, headers by name and the record timestamp.

A job declares them in ``[schema.kafka]`` (``column = "key"``, ``"header:NAME"``,
``"timestamp"``, ``key``/``header`` with ``:json``); the column's Arrow field carries its
source in its metadata (:data:`KAFKA_SOURCE_KEY`), so a decoder needs nothing but the schema.
The value decoder decodes the message value into the other columns; :func:`attach` then adds
these columns, checked like any value, for the rows that decoded. A key or header that does
not convert quarantines its record, like a bad value.

Messages reach the decoders as values: a value that carries its message's key, headers and
timestamp is a :class:`KafkaValue` (``bytes`` with three attributes), made by
:func:`with_metadata` only for jobs that declare such columns, so the live loop's buffers and
every decoder signature stay as they are.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core.jobspec import KAFKA_SOURCE_KEY
from stream.decode.coerce import MAX_MS, MIN_MS, RecordError, field_coercer, physical

Headers = Sequence[tuple[str, str | bytes | None]]
_INTEGER = re.compile(r"[+-]?[0-9]{1,40}")


class KafkaValue(bytes):
    """A message value with its message's ``(key, headers, timestamp_ms)`` in ``meta``."""

    meta: tuple[bytes | None, Headers | None, int | None]

    def __new__(
        cls, value: bytes, key: bytes | None, headers: Headers | None, timestamp_ms: int | None
    ) -> KafkaValue:
        made = super().__new__(cls, value)
        made.meta = (key, headers, timestamp_ms)
        return made


class NullValue(KafkaValue):
    """A message with a null value (no payload), carrying its metadata: empty bytes that are
    not a value. Made only for jobs declaring ``delete_when = { null_value = true }``, whose
    decoder (:mod:`stream.decode.tombstones`) turns it into its key's tombstone."""


def with_metadata(
    value: bytes | None,
    key: bytes | None,
    headers: Headers | None,
    timestamp_ms: int | None,
    *,
    nulls: bool = False,
) -> bytes | None:
    """``value`` carrying its message's metadata (a null value stays ``None``, or with
    ``nulls`` becomes a :class:`NullValue`)."""
    if value is None:
        return NullValue(b"", key, headers, timestamp_ms) if nulls else None
    return KafkaValue(value, key, headers, timestamp_ms)


def carry_all(
    items: Iterable[tuple[bytes | None, bytes | None, Headers | None, int | None]],
    *,
    nulls: bool = False,
) -> list[bytes | None]:
    """:func:`with_metadata` of each ``(value, key, headers, timestamp_ms)``, with the cyclic
    garbage collector paused while the batch's wrappers are made (each has a ``__dict__``:
    collections triggered by allocating them cost three times the wrapping itself)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        if nulls:
            return [KafkaValue(v, k, h, t) if v is not None else NullValue(b"", k, h, t)
                    for v, k, h, t in items]  # fmt: skip
        return [None if v is None else KafkaValue(v, k, h, t) for v, k, h, t in items]
    finally:
        if paused:
            gc.enable()


def kafka_fields(schema: pa.Schema) -> list[tuple[pa.Field, str]]:
    """The schema's metadata columns and their sources (``key``, ``header:x:json``...)."""
    out = []
    for f in schema:
        source = (f.metadata or {}).get(KAFKA_SOURCE_KEY)
        if source is not None:
            out.append((f, source.decode()))
    return out


def value_schema(schema: pa.Schema) -> pa.Schema:
    """The columns the message value holds (the schema less its metadata columns)."""
    names = {f.name for f, _ in kafka_fields(schema)}
    return pa.schema([f for f in schema if f.name not in names]) if names else schema


def attach(
    table: pa.Table,
    order: list[int] | None,
    bad: dict[int, str],
    values: Sequence[bytes | None],
    schema: pa.Schema,
) -> tuple[pa.Table, list[int] | None, dict[int, str]]:
    """``table`` (rows decoded from ``values`` at batch positions ``order``; ``None``: all)
    in the full ``schema`` with its metadata columns; rows whose metadata does not convert
    leave the table and join ``bad``."""
    declared = kafka_fields(schema)
    if not declared:
        return table, order, bad
    positions = list(range(len(values))) if order is None else order
    fast = _vectorised(declared, [values[i] for i in positions])
    if fast is not None:
        return _assemble(table, fast, schema), order, bad
    columns: dict[str, list[Any]] = {f.name: [] for f, _ in declared}
    keep: list[bool] = []
    for i in positions:
        try:
            row = [_value(values[i], f, source) for f, source in declared]
        except RecordError as exc:
            bad[i] = f"decode: {exc}"
            keep.append(False)
            continue
        keep.append(True)
        for (f, _), v in zip(declared, row, strict=True):
            columns[f.name].append(v)
    if not all(keep):
        table = table.filter(pa.array(keep, pa.bool_()))
        positions = [i for i, k in zip(positions, keep, strict=True) if k]
    built = {}
    for f, _ in declared:
        arr = pa.array(columns[f.name], physical(f.type))
        built[f.name] = arr.cast(f.type) if pa.types.is_timestamp(f.type) else arr
    return _assemble(table, built, schema), positions, bad


def _assemble(table: pa.Table, meta: dict[str, pa.Array], schema: pa.Schema) -> pa.Table:
    arrays = [meta[f.name] if f.name in meta else table[f.name] for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _vectorised(
    declared: list[tuple[pa.Field, str]], values: list[bytes | None]
) -> dict[str, pa.Array] | None:
    """The metadata columns built over the whole batch at once, or ``None`` when some value
    needs the per-record path (which alone decides and words a reason): a null in a required
    column, text that is not UTF-8, a timestamp outside years 1..9999, a JSON or integer
    source. So both paths give the same rows."""
    out = {}
    for f, source in declared:
        raws = [_raw(v, source)[0] for v in values]
        if source == "timestamp":
            arr = pa.array(raws, pa.int64())
            if pc.any(pc.or_(pc.less(arr, MIN_MS), pc.greater(arr, MAX_MS))).as_py():
                return None
            if f.type.unit == "us":
                arr = pc.multiply(arr, 1000)
            arr = arr.cast(f.type)
        elif source.endswith(":json") or not (
            pa.types.is_string(f.type) or pa.types.is_binary(f.type)
        ):
            return None
        else:
            arr = pa.array(raws, pa.binary())
            if pa.types.is_string(f.type):
                try:
                    arr = arr.cast(pa.string())
                except pa.ArrowInvalid:
                    return None
        if not f.nullable and arr.null_count:
            return None
        out[f.name] = arr
    return out


def _value(value: bytes | None, f: pa.Field, source: str) -> Any:
    raw, what = _raw(value, source)
    if raw is None:
        if not f.nullable:
            raise RecordError(f"required field {f.name!r}: the message has no {what}")
        return None
    try:
        if source == "timestamp":
            return field_coercer(f)(raw, f.type)
        if source.endswith(":json"):
            from stream.decode.json import loads  # the JSON decoder's exact parser

            doc = loads(raw)
            return None if doc is None and f.nullable else field_coercer(f)(doc, f.type)
        return _text(raw, f)
    except RecordError as exc:
        raise RecordError(f"field {f.name!r} ({what}): {exc}") from None


def _raw(value: bytes | None, source: str) -> tuple[Any, str]:
    key, headers, stamp = value.meta if isinstance(value, KafkaValue) else (None, None, None)
    if source == "timestamp":
        return stamp, "timestamp"
    if source[0] == "k":
        return key, "key"
    name = source.split(":")[1]
    found = None
    for h, v in headers or ():
        if h == name:
            found = v.encode() if isinstance(v, str) else v  # the last one, as lastHeader
    return found, f"header {name!r}"


def _text(raw: bytes, f: pa.Field) -> Any:
    if pa.types.is_binary(f.type):
        return raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"expected UTF-8, found byte 0x{raw[exc.start]:02x}") from None
    if pa.types.is_integer(f.type):
        if not _INTEGER.fullmatch(text):
            raise RecordError(f"expected a decimal integer, found {text[:40]!r}")
        return field_coercer(f)(int(text), f.type)
    return field_coercer(f)(text, f.type)
