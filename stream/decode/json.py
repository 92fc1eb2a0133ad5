"""The JSON decoder: one entry point, a vectorised fast path and a per-record reference.

The same source record always yields the same row (DESIGN §4), whatever batch it arrives in.
:meth:`JsonDecoder.decode_columns` first parses the batch with Arrow's JSON reader; a record
the fast path cannot prove good (a failed parse is bisected down to its culprits; a value out
of range, not finite or null where required is flagged row by row) goes through the
per-record reference (:mod:`stream.decode.coerce`), which alone decides and words the reason.
So a batch decodes exactly as its records decode one by one. Nothing about one record can
raise: every failure quarantines that record (DESIGN §7).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from coordinator.core.values import Side
from stream.decode.base import ColumnsDecoder, Quarantined, add_lineage
from stream.decode.coerce import (
    MAX_MS,
    MIN_MS,
    BigInt,
    RecordError,
    field_coercer,
    int_range,
    keeps_non_finite,
    physical,
)
from stream.decode.json_shape import Parsed, parse_records
from stream.decode.kafka_meta import attach, value_schema
from stream.decode.transform import Transform, apply_transform

log = logging.getLogger(__name__)

#: Deepest JSON nesting a record may have (deeper records are quarantined).
MAX_DEPTH = 256
_BIG_INT_DIGITS = 40  # longer integer literals are kept as text (never a 4300-digit int)
_SMALL_CHUNK = 32  # a failing chunk this small goes to the reference whole
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_NEWLINE = pa.scalar(b"\n", pa.binary())
_PARSE_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)

Indices = list[int] | None  # batch positions; None: all of them, in order


class JsonDecoder(ColumnsDecoder):
    """Decodes one-object-per-message JSON into the job's schema (``[stream] format = "json"``)."""

    format = "json"

    def __init__(self, *, fast: bool = True, shapes: bool = True) -> None:
        self.fast = fast  # False: every record through the reference (for tests, benchmarks)
        self.shapes = shapes  # False: no shape path, Arrow's reader parses every record

    def decode_columns(
        self,
        partitions: Sequence[int],
        offsets: Sequence[int],
        values: Sequence[bytes | None],
        schema: pa.Schema,
        transform: Transform,
        side: Side,
    ) -> tuple[pa.Table, list[Quarantined]]:
        """Rows (user columns as the transform returns them, plus lineage) and quarantined records.

        The rows keep the batch's order; the quarantined records are in batch order too. A
        batch with no good record gives an empty table with the transform's schema.
        """
        table, order, bad = _decode_values(values, value_schema(schema), self.fast, self.shapes)
        table, order, bad = attach(table, order, bad, values, schema)
        out, kept_rows, failed = apply_transform(table, transform)
        kept = order if kept_rows is None else [_at(order, i) for i in kept_rows]
        bad.update({_at(order, i): reason for i, reason in failed.items()})
        parts = pa.array(np.fromiter(partitions, np.int32, len(partitions)))
        offs = pa.array(np.fromiter(offsets, np.int64, len(offsets)))
        if kept is not None:
            take = pa.array(kept, pa.int64())
            parts, offs = parts.take(take), offs.take(take)
        quarantined = [
            Quarantined(partitions[i], offsets[i], bad[i], values[i]) for i in sorted(bad)
        ]
        return add_lineage(out, parts, offs, "kafka", side), quarantined


DECODER = JsonDecoder()
decode_batch = DECODER.decode
decode_columns = DECODER.decode_columns


def _at(order: Indices, i: int) -> int:
    return i if order is None else order[i]


def _decode_values(
    values: Sequence[bytes | None], schema: pa.Schema, fast_path: bool, shapes: bool = True
) -> tuple[pa.Table, Indices, dict[int, str]]:
    """The decoded rows, the batch positions they came from, ``{position: reason}`` for the rest."""
    if values and fast_path and fast_supported(schema):
        fast, fast_idx, suspects = _fast(values, schema, shapes)
    else:
        fast, fast_idx, suspects = _build([], schema), [], list(range(len(values)))
    if not suspects:
        return fast, fast_idx, {}
    ref, ref_idx, bad = _reference(values, suspects, schema)
    assert fast_idx is not None  # suspects exist: the fast path did not take every record
    if not fast_idx:
        return ref, ref_idx, bad
    if not ref_idx:
        return fast, fast_idx, bad
    order = np.concatenate([np.asarray(fast_idx, np.int64), np.asarray(ref_idx, np.int64)])
    perm = np.argsort(order, kind="stable")
    table = pa.concat_tables([fast, ref]).take(pa.array(perm))
    return table, order[perm].tolist(), bad


# -- reference: one record at a time -------------------------------------------------------


def _reference(
    values: Sequence[bytes | None], positions: list[int], schema: pa.Schema
) -> tuple[pa.Table, list[int], dict[int, str]]:
    checks = [(f.name, field_coercer(f), f.type, f.nullable) for f in schema]
    rows: list[list[Any]] = []
    ok: list[int] = []
    bad: dict[int, str] = {}
    for i in positions:
        try:
            rows.append(_record(values[i], checks))
            ok.append(i)
        except RecordError as exc:
            bad[i] = f"decode: {exc}"
        except Exception as exc:
            bad[i] = f"decode: {type(exc).__name__}: {exc}"
    return build_rows(rows, ok, bad, schema)


def _record(value: bytes | None, checks: list[tuple[str, Any, pa.DataType, bool]]) -> list[Any]:
    doc = loads(value)
    if not isinstance(doc, dict):
        raise RecordError(f"expected a JSON object, found {type(doc).__name__}")
    row: list[Any] = []
    for name, check, type_, nullable in checks:
        raw = doc.get(name)
        if raw is None:
            if not nullable:
                raise RecordError(f"required field {name!r} is missing or null")
            row.append(None)
            continue
        try:
            row.append(check(raw, type_))
        except RecordError as exc:
            raise RecordError(f"field {name!r}: {exc}") from None
    return row


def record_row(value: bytes, schema: pa.Schema) -> list[Any]:
    """One JSON record as a row of ``schema`` (the reference checks); ``RecordError`` if not."""
    return _record(value, [(f.name, field_coercer(f), f.type, f.nullable) for f in schema])


def rows_table(rows: list[list[Any]], schema: pa.Schema) -> pa.Table:
    """Rows of :func:`record_row` as a table of ``schema``."""
    return _build(rows, schema)


def loads(value: bytes | None) -> Any:
    """Parse one message exactly (numbers as ``int``/``Decimal``, never through float)."""
    if value is None:
        raise RecordError("tombstone (null value)")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(
            f"expected UTF-8, found byte 0x{value[exc.start]:02x} at {exc.start}"
        ) from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise RecordError(f"expected JSON nested at most {MAX_DEPTH} deep")
    try:
        return json.loads(text, parse_float=Decimal, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise RecordError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise RecordError(f"expected JSON nested at most {MAX_DEPTH} deep") from None


def _parse_int(text: str) -> int | BigInt:
    return BigInt(text) if len(text) > _BIG_INT_DIGITS else int(text)


def _depth(text: str) -> int:
    deepest = depth = 0
    for m in _BRACKETS.finditer(_STRINGS.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _build(rows: list[list[Any]], schema: pa.Schema) -> pa.Table:
    columns = []
    for i, f in enumerate(schema):
        arr = pa.array([r[i] for r in rows], type=physical(f.type))
        columns.append(arr.cast(f.type) if pa.types.is_timestamp(f.type) else arr)
    return pa.Table.from_arrays(columns, schema=schema)


def build_rows(
    rows: list[list[Any]], ok: list[int], bad: dict[int, str], schema: pa.Schema
) -> tuple[pa.Table, list[int], dict[int, str]]:
    """Coerced ``rows`` (from batch positions ``ok``) as a table; rows Arrow refuses join ``bad``."""
    try:
        return _build(rows, schema), ok, bad
    except Exception:
        return _build_one_by_one(rows, ok, bad, schema)


def _build_one_by_one(
    rows: list[list[Any]], ok: list[int], bad: dict[int, str], schema: pa.Schema
) -> tuple[pa.Table, list[int], dict[int, str]]:
    tables: list[pa.Table] = []
    kept: list[int] = []
    for row, i in zip(rows, ok, strict=True):
        try:
            tables.append(_build([row], schema))
            kept.append(i)
        except Exception as exc:
            bad[i] = f"decode: arrow: {type(exc).__name__}: {exc}"
    return (pa.concat_tables(tables) if tables else _build([], schema)), kept, bad


# -- fast path: vectorised over the batch --------------------------------------------------


def fast_supported(schema: pa.Schema) -> bool:
    """Whether the vectorised path can decode ``schema`` (others go record by record).

    A float field keeping NaN / Infinity goes record by record: Arrow's reader accepts more
    spellings of them than JSON does.
    """
    return not any(keeps_non_finite(f) for f in schema) and all(_fast_type(f.type) for f in schema)


def _fast_type(t: pa.DataType) -> bool:
    """Scalars Arrow's reader parses like the reference, and lists / structs of them (maps: no,
    the reader has none)."""
    if pa.types.is_list(t):
        return _fast_type(t.value_type)
    if pa.types.is_struct(t):
        return all(_fast_type(f.type) for f in t)
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_string(t)
        or pa.types.is_boolean(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_decimal(t)
    )


def _fast(
    values: Sequence[bytes | None], schema: pa.Schema, shapes: bool = True
) -> tuple[pa.Table, Indices, list[int]]:
    """Rows the fast path proves good, their positions, and the positions it cannot prove.

    Records of a common flat shape are parsed by :mod:`stream.decode.json_shape`; the others
    by Arrow's JSON reader, bisecting a failed parse down to its culprits.
    """
    arr = pa.array(values, pa.binary())
    candidates = _candidates(arr)
    sub = arr if candidates is None else arr.take(pa.array(candidates, pa.int64()))
    wide = _parse_schema(schema)
    required = frozenset(f.name for f in schema if not f.nullable)
    if shapes:
        parts, rest = parse_records(sub, wide, required)
    else:
        parts, rest = [], np.arange(len(sub), dtype=np.int64)
    failed: list[int] = []
    if len(rest):
        left = sub if len(rest) == len(sub) else sub.take(pa.array(rest))
        chunks: list[tuple[int, pa.Table]] = []
        _parse_chunk(left, 0, len(left), wide, chunks, failed)
        parts += [(rest[lo : lo + t.num_rows], t) for lo, t in chunks]
        failed = rest[failed].tolist()
    if not parts:
        return _build([], schema), [], _positions(candidates, failed, len(values))
    parsed, pos = _in_order(parts)
    table, suspect = _finish(parsed, schema)
    if candidates is None and not failed and suspect is None:
        return table, None, []
    if suspect is not None:
        flags = np.asarray(suspect.to_numpy(zero_copy_only=False), np.bool_)
        table = table.filter(pc.invert(suspect))
        failed = failed + pos[flags].tolist()
        pos = pos[~flags]
    if candidates is not None:
        pos = np.asarray(candidates, np.int64)[pos]
    return table, pos.tolist(), _positions(candidates, failed, len(values))


def _in_order(parts: Parsed) -> tuple[pa.Table, npt.NDArray[np.int64]]:
    """The parsed tables as one, in batch order, and the positions of its rows."""
    if len(parts) == 1:
        return parts[0][1], parts[0][0]
    pos = np.concatenate([p for p, _ in parts])
    order = np.argsort(pos, kind="stable")
    return pa.concat_tables([t for _, t in parts]).take(pa.array(order)), pos[order]


def _positions(candidates: list[int] | None, failed: list[int], n: int) -> list[int]:
    """Every batch position that is not proven good, sorted."""
    bad = set(failed) if candidates is None else {candidates[p] for p in failed}
    if candidates is not None:
        bad |= set(range(n)) - set(candidates)
    return sorted(bad)


def _candidates(arr: pa.BinaryArray) -> list[int] | None:
    """Positions worth a fast parse (``None``: all): the row starts with ``{`` and is shallow.

    A row the JSON reader accepts is valid JSON, so its brackets balance: nesting deeper than
    ``MAX_DEPTH`` needs more than ``2 * MAX_DEPTH`` bytes, and only such long rows have their
    brackets counted (over the data buffer at once). A newline inside a row needs no check:
    each row starting with ``{`` gives at least one row, so "as many rows as records" (checked
    after the parse) proves each gave exactly one, and whitespace lines are JSON whitespace to
    both paths.
    """
    unsure = pc.invert(pc.starts_with(arr, "{").fill_null(False))
    bad = set(pc.indices_nonzero(unsure).to_pylist()) if pc.any(unsure).as_py() else set()
    long_rows = pc.greater(pc.binary_length(arr), 2 * MAX_DEPTH).fill_null(False)
    if pc.any(long_rows).as_py():
        where = pc.indices_nonzero(long_rows).to_numpy()
        starts, data = _layout(arr.filter(long_rows))
        hits = np.flatnonzero((data == ord("[")) | (data == ord("{")))
        per_row = np.bincount(np.searchsorted(starts, hits, side="right") - 1, minlength=len(where))
        bad.update(where[per_row > MAX_DEPTH].tolist())
    if not bad:
        return None
    return [i for i in range(len(arr)) if i not in bad]


def _layout(arr: pa.BinaryArray) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """Where each row starts in the row bytes, and the row bytes."""
    _, offsets_buf, data_buf = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(offsets_buf, np.int32)[arr.offset : arr.offset + n + 1]
    first = int(offsets[0]) if n else 0
    end = int(offsets[-1]) if n else 0
    data = (
        np.frombuffer(data_buf, np.uint8)[first:end]
        if data_buf is not None
        else np.zeros(0, np.uint8)
    )
    return (offsets[:-1] - first).astype(np.int64), data


def _parse_chunk(
    sub: pa.BinaryArray,
    lo: int,
    hi: int,
    schema: pa.Schema,
    chunks: list[tuple[int, pa.Table]],
    failed: list[int],
) -> None:
    """Parse ``sub[lo:hi]``; on failure bisect, down to small chunks left to the reference."""
    if lo == hi:
        return
    table = _try_parse(sub.slice(lo, hi - lo), schema)
    if table is not None:
        chunks.append((lo, table))
    elif hi - lo <= _SMALL_CHUNK:
        failed.extend(range(lo, hi))
    else:
        mid = (lo + hi) // 2
        _parse_chunk(sub, lo, mid, schema, chunks, failed)
        _parse_chunk(sub, mid, hi, schema, chunks, failed)


def _try_parse(values: pa.BinaryArray, schema: pa.Schema) -> pa.Table | None:
    """Arrow's JSON reader over ``values`` (one per line), or ``None`` if any line is not clean."""
    try:
        values.cast(pa.string())  # valid UTF-8, or the reference says which byte is not
    except pa.ArrowInvalid:
        return None
    lines = pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)
    joined = pc.binary_join(lines, _NEWLINE)[0].as_buffer()
    try:
        raw = pajson.read_json(
            joined,
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except _PARSE_ERRORS:
        return None
    return raw if raw.num_rows == len(values) else None


def _parse_schema(schema: pa.Schema) -> pa.Schema:
    """What Arrow parses into: wide types, narrowed after the range checks."""

    def wide(t: pa.DataType) -> pa.DataType:
        if pa.types.is_list(t):
            return pa.list_(wide(t.value_type))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, wide(f.type)) for f in t])
        if pa.types.is_integer(t) or pa.types.is_timestamp(t):
            return pa.int64()
        return pa.float64() if pa.types.is_floating(t) else t

    return pa.schema([pa.field(f.name, wide(f.type)) for f in schema])


def _finish(raw: pa.Table, schema: pa.Schema) -> tuple[pa.Table, pa.Array | None]:
    """Narrow ``raw`` to ``schema``; the rows a range, finiteness or null check flags."""
    columns = []
    flags: list[pa.Array] = []
    for f in schema:
        col = raw[f.name].combine_chunks()
        if not f.nullable and col.null_count:
            flags.append(col.is_null())
        col, flag = _narrow(col, f.type)
        if flag is not None:
            flags.append(flag.fill_null(False))
        columns.append(col)
    table = pa.Table.from_arrays(columns, schema=schema)
    flagged = [f for f in flags if pc.any(f).as_py()]
    if not flagged:
        return table, None
    suspect = flagged[0]
    for f in flagged[1:]:
        suspect = pc.or_(suspect, f)
    return table, suspect


def _narrow(col: pa.Array, type_: pa.DataType) -> tuple[pa.Array, pa.Array | None]:
    """``col`` in ``type_`` and the rows that do not fit (``None``: checked, all fit)."""
    if pa.types.is_struct(type_):
        return _narrow_struct(col, type_)
    if pa.types.is_list(type_):
        return _narrow_list(col, type_)
    if pa.types.is_integer(type_):
        if type_ == pa.int64():
            return col, None
        low, high = int_range(type_)
        outside = pc.or_(pc.less(col, low), pc.greater(col, high))
        return col.cast(type_, safe=False), outside
    if pa.types.is_floating(type_):
        narrowed = col.cast(type_, safe=False)
        return narrowed, _negative_zero(col, pc.invert(pc.is_finite(narrowed)))
    if pa.types.is_timestamp(type_):
        outside = pc.or_(pc.less(col, MIN_MS), pc.greater(col, MAX_MS))
        if type_.unit == "us":
            col = pc.multiply(col, 1000)
        elif type_.unit != "ms":
            raise TypeError(f"no decoder for Arrow type {type_}")
        return col.cast(type_, safe=False), outside
    if pa.types.is_decimal(type_):  # Arrow's reader misses some precision overflows ("1e16")
        largest = Decimal(10) ** (type_.precision - type_.scale) - Decimal(1).scaleb(-type_.scale)
        return col, pc.greater(pc.abs(col), pa.scalar(largest, type_))
    return col, None


def _negative_zero(col: pa.Array, flag: pa.Array) -> pa.Array:
    """``flag`` or'ed with the rows holding -0.0: the reference alone tells the integer
    literal ``-0`` (the number 0, so 0.0) from the float ``-0.0``; Arrow reads both as -0.0."""
    values = np.asarray(col.to_numpy(zero_copy_only=False), np.float64)
    negative = np.signbit(values) & (values == 0)
    return pc.or_(flag, pa.array(negative)) if negative.any() else flag


def _narrow_struct(col: pa.StructArray, type_: pa.StructType) -> tuple[pa.Array, pa.Array | None]:
    """Each field narrowed; a row is flagged when any of its fields is."""
    children: list[pa.Array] = []
    flag: pa.Array | None = None
    for f, child in zip(type_, col.flatten(), strict=True):  # flatten: parent nulls applied
        narrowed, child_flag = _narrow(child, f.type)
        children.append(narrowed)
        if child_flag is not None:
            child_flag = child_flag.fill_null(False)
            flag = child_flag if flag is None else pc.or_(flag, child_flag)
    mask = col.is_null() if col.null_count else None
    return pa.StructArray.from_arrays(children, fields=list(type_), mask=mask), flag


def _narrow_list(col: pa.ListArray, type_: pa.ListType) -> tuple[pa.Array, pa.Array | None]:
    """The items narrowed; a row is flagged when any of its items is."""
    items, item_flag = _narrow(col.flatten(), type_.value_type)
    lengths = np.asarray(
        pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False), np.int32
    )
    offsets = pa.array(np.concatenate([np.zeros(1, np.int32), np.cumsum(lengths, dtype=np.int32)]))
    mask = col.is_null() if col.null_count else None
    out = pa.ListArray.from_arrays(offsets, items, type=type_, mask=mask)
    if item_flag is None:
        return out, None
    hit = np.asarray(item_flag.fill_null(False).to_numpy(zero_copy_only=False), np.bool_)
    if not hit.any():
        return out, None
    parents = np.asarray(pc.list_parent_indices(col).to_numpy(zero_copy_only=False), np.int64)
    rows = np.zeros(len(col), np.bool_)
    rows[parents[hit]] = True
    return out, pa.array(rows)
