"""Declared field types of a job's ``[schema.fields]`` and their Arrow types.

Scalars by name (:data:`FIELD_TYPES`), ``decimal(P,S)``, and nested ``list<T>``,
``struct<name: T, ...>`` and ``map<string, T>``, parsed structurally by a small
recursive-descent parser (never by evaluating text).
"""

from __future__ import annotations

import difflib
import re

import pyarrow as pa

#: Field types a job may declare, mapped to Arrow types (plus ``decimal(P,S)``, see
#: :func:`field_type`).
FIELD_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "float32": pa.float32(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp_ms": pa.timestamp("ms", tz="UTC"),
    "timestamp_us": pa.timestamp("us", tz="UTC"),
    "binary": pa.binary(),
}
_DECIMAL = re.compile(r"decimal\(\s*([0-9]{1,3})\s*,\s*([0-9]{1,3})\s*\)")
_TYPE_NAMES = [*FIELD_TYPES, "decimal(P,S)"]


_NESTED_GRAMMAR = (
    "a scalar type, decimal(P,S), list<T>, struct<name: T, ...> or map<string, T> (nesting allowed)"
)
_MAX_TYPE_DEPTH = 16
_NESTED_WORDS = ("decimal", "list", "struct", "map")


def field_type(name: str) -> pa.DataType:
    """The Arrow type of a declared field type; ``ValueError`` saying what is accepted.

    Grammar (spaces are free)::

        type   := scalar | decimal(P,S) | list<type> | map<string, type>
                | struct<ident: type [, ident: type]...>

    Nested fields, list items and map values are nullable; map keys are strings.
    """
    if name in FIELD_TYPES:
        return FIELD_TYPES[name]
    parser = _TypeParser(name)
    type_ = parser.type_(0)
    parser.skip()
    if parser.pos != len(name):
        raise parser.error("end of the type")
    return type_


class _TypeParser:
    """A recursive-descent parser of one declared type (see :func:`field_type`)."""

    _WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def error(self, wanted: str) -> ValueError:
        found = self.text[self.pos :] or "the end"
        word = self._WORD.match(self.text, self.pos)
        close = (
            difflib.get_close_matches(word.group(), [*FIELD_TYPES, *_NESTED_WORDS], n=1)
            if word is not None and wanted == "a type"
            else []
        )
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if self.pos == 0 and wanted == "a type":
            return ValueError(
                f"expected one of {_TYPE_NAMES}, found {self.text!r}{hint}; "
                f"types are {_NESTED_GRAMMAR}"
            )
        return ValueError(
            f"expected {wanted} at position {self.pos} of {self.text!r}, found {found!r}{hint}; "
            f"types are {_NESTED_GRAMMAR}"
        )

    def expect(self, token: str) -> None:
        self.skip()
        if not self.text.startswith(token, self.pos):
            raise self.error(repr(token))
        self.pos += len(token)

    def word(self, wanted: str) -> str:
        self.skip()
        m = self._WORD.match(self.text, self.pos)
        if m is None:
            raise self.error(wanted)
        self.pos = m.end()
        return m.group()

    def type_(self, depth: int) -> pa.DataType:
        if depth > _MAX_TYPE_DEPTH:
            raise ValueError(
                f"expected types nested at most {_MAX_TYPE_DEPTH} deep, found {self.text!r}"
            )
        self.skip()
        start = self.pos
        m = self._WORD.match(self.text, self.pos)
        if m is None:
            raise self.error("a type")
        word = m.group()
        if word in FIELD_TYPES:
            self.pos = m.end()
            return FIELD_TYPES[word]
        if word == "decimal":
            d = _DECIMAL.match(self.text, self.pos)
            if d is None:
                raise self.error("decimal(P,S)")
            self.pos = d.end()
            precision, scale = int(d.group(1)), int(d.group(2))
            if not 1 <= precision <= 38 or scale > precision:
                raise ValueError(
                    "expected decimal(P,S) with 1 <= P <= 38 and 0 <= S <= P, "
                    f"found {self.text[start : self.pos]!r}"
                )
            return pa.decimal128(precision, scale)
        if word == "list":
            self.pos = m.end()
            self.expect("<")
            item = self.type_(depth + 1)
            self.expect(">")
            return pa.list_(item)
        if word == "map":
            self.pos = m.end()
            self.expect("<")
            if self.word("string") != "string":
                raise ValueError(
                    f"expected map keys of type string (map<string, T>), found {self.text!r}"
                )
            self.expect(",")
            value = self.type_(depth + 1)
            self.expect(">")
            return pa.map_(pa.string(), value)
        if word == "struct":
            self.pos = m.end()
            self.expect("<")
            fields: list[pa.Field] = []
            while True:
                field_name = self.word("a field name")
                if field_name in {f.name for f in fields}:
                    raise ValueError(
                        f"expected distinct struct field names, found {field_name!r} twice in {self.text!r}"
                    )
                self.expect(":")
                fields.append(pa.field(field_name, self.type_(depth + 1)))
                self.skip()
                if self.text.startswith(",", self.pos):
                    self.pos += 1
                    continue
                self.expect(">")
                return pa.struct(fields)
        raise self.error("a type")
