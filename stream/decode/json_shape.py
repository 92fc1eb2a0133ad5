"""Flat JSON records of one shape, parsed without a JSON parser: the JSON decoder's quickest path.

Most streams send one shape of record: the same keys in the same order, scalar values. For such
a batch, :func:`parse_shapes` takes a *shape* from one record (its keys in order, and for each
value whether it is a quoted string) and writes a strict regular expression for it: exactly
those keys once each, in that order, any JSON whitespace between tokens, and for each value
only the grammar its field's fast decode accepts (integers of at most 18 digits, JSON numbers,
decimals that fit their precision and scale as written, ``true``/``false``, strings without
a backslash, quote or control character; ``null`` only where the field is nullable). One
regex pass (RE2, linear time, over the whole batch) finds the records that match. In a
matching record every ``"`` delimits a key or a string value, so the record has a known
number of quotes at known places: one search for ``"`` over the batch's bytes gives every
value's span at once, and Arrow casts the spans to the field types. A shape written the way
JSON encoders write (compact, or ``json.dumps``'s ``", "`` and ``": "``) fixes that spacing,
so a value's span is exact; any other spacing is allowed too, and the spans are trimmed.
A batch may hold a few shapes (a null string has no quotes: another shape); each costs one
regex pass over the records no earlier shape took.

A record that does not match goes on to Arrow's JSON reader (:mod:`stream.decode.json`),
so the regex only has to be exact about what it accepts, never about what it refuses: every
record it accepts is valid JSON whose decode by the per-record reference is the row built
here (the property tests of the fast path check both agree).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

_WS = r"[ \t\n\r]*"
_INT = r"-?(?:0|[1-9][0-9]{0,17})"  # at most 18 digits: always fits int64
_FRAC_EXP = r"(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
# A JSON number, except the integer "-0" (the reference reads it as the int 0, so 0.0, where
# a cast to float gives -0.0); "-0.0" and "-0e1" are floats to both.
_NUM = (
    r"(?:(?:0|-?[1-9][0-9]*)" + _FRAC_EXP + r"|-0(?:\.[0-9]+(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+))"
)
_STR = r'"[^"\\\x00-\x1f]*"'
_SCALAR = r"(?:-?(?:0|[1-9][0-9]*)" + _FRAC_EXP + r"|true|false|null)"
_TRIM = ": ,}\t\n\r"  # what surrounds an unquoted value between its key and the next one
_PLAIN_KEY = set('"\\') | {chr(c) for c in range(0x20)}
#: ``(after a key, between pairs)`` as JSON encoders write them: compact (Java, JavaScript,
#: Go) and Python's ``json.dumps`` default.
_SPACINGS = ((":", ","), (": ", ", "))
_MAX_SHAPES = 3  # shapes tried per batch (each is one regex pass over the records left)
_SMALL = 32  # a UTF-8 check failing on this few rows leaves them all to the reader
_MAX_PROBES = 8  # records looked at for a shape before the batch goes to the reader
_QUOTE = ord('"')

Parsed = list[tuple[npt.NDArray[np.int64], pa.Table]]  # (positions, rows in the parse schema)


@dataclass(frozen=True)
class Shape:
    """A record layout: keys in order, which values are quoted strings, and its regex."""

    keys: tuple[str, ...]
    quoted: tuple[bool, ...]
    pattern: str
    #: The exact text after each key's closing quote and before the next key (``": "``,
    #: ``", "``) when the shape fixes it, so unquoted values need no trimming; ``None``:
    #: any JSON whitespace around ``:`` and ``,``.
    spacing: tuple[str, str] | None = None

    @property
    def quotes(self) -> int:
        """The ``"`` characters in a record of this shape."""
        return sum(4 if q else 2 for q in self.quoted)


def parse_records(
    sub: pa.BinaryArray, wide: pa.Schema, required: frozenset[str]
) -> tuple[Parsed, npt.NDArray[np.int64]]:
    """:func:`parse_shapes` over the rows of ``sub`` that are valid UTF-8 (the rest: left)."""
    everything = np.arange(len(sub), dtype=np.int64)
    if not len(sub) or not shaped_schema(wide):
        return [], everything
    text, valid = _utf8_rows(sub)
    if text is not None:
        return parse_shapes(text, wide, required)
    if not len(valid):
        return [], everything
    parsed, rest = parse_shapes(sub.take(pa.array(valid)).cast(pa.string()), wide, required)
    invalid = np.setdiff1d(everything, valid, assume_unique=True)
    mapped = [(valid[p], t) for p, t in parsed]
    return mapped, np.union1d(valid[rest], invalid)


def _utf8_rows(arr: pa.BinaryArray) -> tuple[pa.StringArray | None, npt.NDArray[np.int64]]:
    """``arr`` as text if it is all valid UTF-8, else ``None`` and the positions of the rows
    that are (found by halving the failed check)."""
    try:
        return arr.cast(pa.string()), np.arange(len(arr), dtype=np.int64)
    except pa.ArrowInvalid:
        if len(arr) <= _SMALL:
            return None, np.zeros(0, np.int64)
    mid = len(arr) // 2
    low, high = _utf8_rows(arr.slice(0, mid))[1], _utf8_rows(arr.slice(mid))[1]
    return None, np.concatenate([low, mid + high])


def parse_shapes(
    strings: pa.StringArray, schema: pa.Schema, required: frozenset[str] = frozenset()
) -> tuple[Parsed, npt.NDArray[np.int64]]:
    """Rows of ``strings`` (valid UTF-8) that match a shape, in ``schema`` (the parse types);
    a shape has no ``null`` for the ``required`` fields (nor misses them).

    Returns ``[(positions, table)]`` for each shape that matched and the positions that
    matched none (in order), all positions into ``strings``.
    """
    rest = np.arange(len(strings), dtype=np.int64)
    parsed: Parsed = []
    if not shaped_schema(schema):
        return parsed, rest
    left, passes, probe = strings, 0, 0  # probe: the record whose shape is tried next
    while passes < _MAX_SHAPES and probe < min(len(left), _MAX_PROBES):
        shape = shape_of(left[probe].as_py(), schema, required)
        if shape is None:  # an odd record (it goes to the reader): try the next one's shape
            probe += 1
            continue
        passes += 1
        try:
            hit = pc.match_substring_regex(left, shape.pattern)
        except pa.ArrowInvalid:  # RE2 refused the pattern (a huge schema): the reader's batch
            break
        n_hit = pc.sum(hit).as_py() or 0
        matched = None if n_hit == 0 else left if n_hit == len(left) else left.filter(hit)
        table = None if matched is None else _columns(matched, shape, schema)
        if table is None:
            probe += 1
            continue
        mask = np.asarray(hit.to_numpy(zero_copy_only=False), np.bool_)
        parsed.append((rest[mask], table))
        rest = rest[~mask]
        if n_hit == len(left) or 8 * n_hit < len(left):
            break  # all done, or so mixed a batch that more regex passes would not pay
        left, probe = left.filter(pc.invert(hit)), 0
    return parsed, rest


def shaped_schema(schema: pa.Schema) -> bool:
    """Whether every field has a type shapes decode (flat scalars)."""
    return all(_grammar(f) is not None for f in schema)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its ``(key, value)`` pairs, in order, duplicates kept."""


class _Number(str):
    """A JSON number as its literal text."""


def shape_of(text: str, schema: pa.Schema, required: frozenset[str] = frozenset()) -> Shape | None:
    """The shape of the record ``text``, or ``None`` if shapes cannot decode it."""
    try:
        pairs = json.loads(text, object_pairs_hook=_Pairs, parse_int=_Number, parse_float=_Number)
    except (ValueError, RecursionError):
        return None
    if not isinstance(pairs, _Pairs) or not pairs:
        return None
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys) or any(_PLAIN_KEY.intersection(k) for k in keys):
        return None
    fields = {f.name: f.with_nullable(f.nullable and f.name not in required) for f in schema}
    if any(not f.nullable and f.name not in keys for f in fields.values()):
        return None
    grammars: list[tuple[str, str]] = []
    for key, value in pairs:
        field = fields.get(key)
        if field is None:  # a key the schema does not use: any scalar (strings by kind)
            grammar = None if isinstance(value, list) else _STR if _is_text(value) else _SCALAR
        else:
            grammar = _value_grammar(field, value)
        if grammar is None:
            return None
        grammars.append(('"' + _literal(key) + '"', grammar))
    quoted = tuple(g == _STR for _, g in grammars)
    for colon, comma in _SPACINGS:  # the usual encoder outputs first: exact spans, no trim
        if text == _written(pairs, colon, comma):
            body = comma.join(k + colon + g for k, g in grammars)
            return Shape(tuple(keys), quoted, r"\A\{" + body + r"\}\z", (colon, comma))
    body = (_WS + "," + _WS).join(k + _WS + ":" + _WS + g for k, g in grammars)
    pattern = r"\A\{" + _WS + body + _WS + r"\}" + _WS + r"\z"
    return Shape(tuple(keys), quoted, pattern)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and not isinstance(value, _Number)


def _written(pairs: _Pairs, colon: str, comma: str) -> str:
    """``pairs`` written back with this spacing (numbers as they were written)."""
    constants = {True: "true", False: "false", None: "null"}
    return (
        "{"
        + comma.join(
            json.dumps(k, ensure_ascii=False)
            + colon
            + (
                v
                if isinstance(v, _Number)
                else constants.get(v) or json.dumps(v, ensure_ascii=False)
            )
            for k, v in pairs
        )
        + "}"
    )


def _value_grammar(field: pa.Field, value: Any) -> str | None:
    """The regex for ``field``'s values in records shaped like this ``value``."""
    grammar = _grammar(field)
    assert grammar is not None  # shaped_schema checked every field
    if value is None and not field.nullable:
        return None
    if pa.types.is_string(field.type):  # quoted, or null: decides the quote count
        return "null" if value is None else _STR if _is_text(value) else None
    if _is_text(value) or isinstance(value, list):
        return None  # e.g. an ISO timestamp: Arrow's reader and the reference take those
    return grammar + "|null)" if field.nullable else grammar + ")"


def _grammar(field: pa.Field) -> str | None:
    """The opening of the value regex for ``field``'s type (closed by the caller)."""
    t = field.type
    if pa.types.is_string(t):
        return _STR
    if pa.types.is_integer(t) or pa.types.is_timestamp(t):
        return "(?:" + _INT
    if pa.types.is_floating(t):
        return "(?:" + _NUM
    if pa.types.is_boolean(t):
        return "(?:true|false"
    if pa.types.is_decimal128(t):
        return "(?:" + _decimal(t.precision, t.scale)
    return None


def _decimal(precision: int, scale: int) -> str:
    """A decimal literal that fits ``decimal(precision, scale)`` exactly as written."""
    whole = precision - scale
    integer = "0" if whole <= 0 else f"(?:0|[1-9][0-9]{{0,{whole - 1}}})"
    fraction = rf"(?:\.[0-9]{{1,{scale}}})?" if scale > 0 else ""
    return "-?" + integer + fraction


def _literal(key: str) -> str:
    """``key`` as an RE2 literal (no backslash in it: checked by the caller)."""
    return r"\Q" + key + r"\E" if key else ""


def _columns(matched: pa.StringArray, shape: Shape, schema: pa.Schema) -> pa.Table | None:
    """The rows of ``matched`` (all of ``shape``) in ``schema``; ``None`` if a cast fails."""
    n = len(matched)
    _, offsets_buf, data_buf = matched.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32)[matched.offset : matched.offset + n + 1]
    first, end = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(data_buf, np.uint8)[first:end]
    quotes = np.flatnonzero(data == _QUOTE)  # from here on, places count from ``first``
    if len(quotes) != n * shape.quotes:
        return None  # cannot happen for records the regex accepted
    at = quotes.astype(np.int32).reshape(n, shape.quotes)  # int32: what Arrow's offsets hold
    spans: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], bool]] = {}
    q = 0
    before, after = (len(shape.spacing[0]), len(shape.spacing[1])) if shape.spacing else (0, 0)
    last = offsets[1:] - np.int32(first + 1)  # each record's closing brace
    for key, quoted in zip(shape.keys, shape.quoted, strict=True):
        if quoted:
            spans[key] = (at[:, q + 2] + 1, at[:, q + 3], True)
        else:
            stop = at[:, q + 2] - after if q + 2 < shape.quotes else last
            spans[key] = (at[:, q + 1] + 1 + before, stop, shape.spacing is not None)
        q += 4 if quoted else 2
    data_buf = data_buf.slice(first)
    evens = pa.array(np.arange(0, 2 * n, 2, dtype=np.int64))
    quoted_keys = {k for k, q in zip(shape.keys, shape.quoted, strict=True) if q}
    columns = []
    try:
        for f in schema:
            if f.name not in spans:
                columns.append(pa.nulls(n, f.type))
                continue
            start, stop, exact = spans[f.name]
            text = _cut(data_buf, start, stop, evens)
            if f.name in quoted_keys:
                columns.append(text)
            else:
                columns.append(_convert(text if exact else pc.ascii_trim(text, _TRIM), f.type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return pa.Table.from_arrays(columns, schema=schema)


def _cut(
    data: pa.Buffer,
    start: npt.NDArray[np.int32],
    stop: npt.NDArray[np.int32],
    evens: pa.Array,
) -> pa.StringArray:
    """The text ``data[start[i]:stop[i]]`` of each row (spans in order, not overlapping)."""
    n = len(start)
    bounds = np.empty(2 * n, np.int32)
    bounds[0::2] = start
    bounds[1::2] = stop
    spans = pa.Array.from_buffers(pa.string(), 2 * n - 1, [None, pa.py_buffer(bounds), data])
    return spans.take(evens)  # rows 2i are the values, rows 2i+1 what lies between them


def _convert(text: pa.StringArray, type_: pa.DataType) -> pa.Array:
    """Unquoted JSON literals (``null`` included) as ``type_`` (the parse schema's types)."""
    if pa.types.is_string(type_):  # a string field this shape has as null
        return pa.nulls(len(text), type_)
    if not pa.types.is_boolean(type_):
        try:
            return text.cast(type_)  # no null: the common case, one pass
        except pa.ArrowInvalid:
            pass
    nulls = pc.equal(text, "null")
    if pc.any(nulls).as_py():
        text = pc.if_else(nulls, pa.scalar(None, pa.string()), text)
    return pc.equal(text, "true") if pa.types.is_boolean(type_) else text.cast(type_)
