"""Per-record type coercion: one decoded value checked and converted for one Arrow type.

This is the reference every decoder's fast path must agree with. A value that does not fit
its type exactly raises :class:`RecordError` (the record is quarantined), never a silent
change: integers are range-checked for their width, floats must be finite (NaN and Infinity
are quarantined) and fit float32 when declared so, decimals must fit their precision and
scale without rounding, timestamps must lie in years 1..9999.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import struct
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, Context, Decimal, InvalidOperation
from typing import Any

import pyarrow as pa

from coordinator.core.jobspec import NON_FINITE_KEY

#: Epoch milliseconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z.
MIN_MS = -62_135_596_800_000
MAX_MS = 253_402_300_799_999

_WIDE = Context(prec=100)  # wider than any decimal(38, s) result: quantize never rounds
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class RecordError(ValueError):
    """One record cannot become a row; the message says why (it goes to the quarantine)."""


class BigInt(str):
    """A JSON integer literal too long to convert cheaply (kept as its text)."""


def int_range(type_: pa.DataType) -> tuple[int, int]:
    """The smallest and largest value of an Arrow integer type."""
    bits = type_.bit_width
    if pa.types.is_signed_integer(type_):
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _integer(value: Any, type_: pa.DataType) -> int:
    if isinstance(value, bool) or not isinstance(value, int | BigInt):
        raise RecordError(f"expected an integer, found {_show(value)}")
    low, high = int_range(type_)
    if isinstance(value, BigInt) or not low <= value <= high:
        raise RecordError(f"expected an integer in [{low}, {high}] ({type_}), found {_show(value)}")
    return value


def _float(value: Any, type_: pa.DataType) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | BigInt):
        raise RecordError(f"expected a number, found {_show(value)}")
    return _finite(value, type_)


def _float_keep(value: Any, type_: pa.DataType) -> float:
    """As :func:`_float`, but the JSON constants NaN / Infinity / -Infinity are kept."""
    if isinstance(value, float):  # only the constants parse to float (numbers: Decimal)
        return value
    return _float(value, type_)


def _finite(value: Any, type_: pa.DataType) -> float:
    try:
        number = float(value)
    except OverflowError:
        number = float("inf")
    if number != number or number in (float("inf"), float("-inf")):
        raise RecordError(f"expected a finite number ({type_}), found {_show(value)}")
    if pa.types.is_float32(type_):
        try:
            struct.pack("<f", number)
        except OverflowError:
            raise RecordError(
                f"expected a number within float32 range, found {_show(value)}"
            ) from None
    return number


def _string(value: Any, type_: pa.DataType) -> str:
    if not isinstance(value, str) or isinstance(value, BigInt):
        raise RecordError(f"expected a string, found {_show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError("expected valid Unicode text, found a lone surrogate") from None
    return value


def _boolean(value: Any, type_: pa.DataType) -> bool:
    if not isinstance(value, bool):
        raise RecordError(f"expected true/false, found {_show(value)}")
    return value


def _timestamp(value: Any, type_: pa.DataType) -> int:
    """Epoch ms (an integer) or ISO-8601, as an integer in the field's unit.

    ISO-8601 may carry any UTC offset or ``Z`` (converted to the UTC instant); without one
    it is read as UTC. Digits finer than the field's unit are truncated (toward the past):
    nanoseconds for ``timestamp_us``, below the millisecond for ``timestamp_ms``.
    """
    if isinstance(value, BigInt):
        ms, micros = MAX_MS + 1, 0  # out of range below
    elif isinstance(value, str):
        micros = _iso_micros(value)
        ms = micros // 1000
    elif isinstance(value, int) and not isinstance(value, bool):
        ms, micros = value, value * 1000
    else:
        raise RecordError(f"expected epoch milliseconds or ISO-8601, found {_show(value)}")
    if not MIN_MS <= ms <= MAX_MS:
        raise RecordError(f"expected a timestamp in years 1..9999, found {_show(value)}")
    return ms if type_.unit == "ms" else micros


def _iso_micros(text: str) -> int:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise RecordError(f"expected an ISO-8601 timestamp, found {_show(text)}") from None
    if ts.tzinfo is None:  # no offset: the instant is read as UTC (documented)
        ts = ts.replace(tzinfo=UTC)
    try:
        return (ts - _EPOCH) // timedelta(microseconds=1)
    except OverflowError:
        raise RecordError(f"expected a timestamp in years 1..9999, found {_show(text)}") from None


def _decimal(value: Any, type_: pa.DataType) -> Decimal:
    """A JSON number (parsed exactly, never through float) or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise RecordError(f"expected a decimal number or numeric string, found {_show(value)}")
    plain_text = isinstance(value, str) and not isinstance(value, BigInt)
    if plain_text and not _DECIMAL_TEXT.fullmatch(str(value)):
        raise RecordError(f"expected a decimal number or numeric string, found {_show(value)}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise RecordError(f"expected a decimal number, found {_show(value)}") from None
    return fit_decimal(number, type_.precision, type_.scale, value)


def fit_decimal(number: Decimal, precision: int, scale: int, shown: Any) -> Decimal:
    """``number`` at ``scale`` if it fits ``decimal(precision, scale)`` exactly, else raise."""
    if not number.is_finite():
        raise RecordError(f"expected a finite decimal, found {_show(shown)}")
    if number and number.adjusted() >= precision - scale:
        raise RecordError(
            f"expected at most {precision - scale} integer digits, found {_show(shown)}"
        )
    if number.as_tuple().exponent < -scale:  # type: ignore[operator]
        if number.adjusted() < -scale - 1 and number:
            raise RecordError(f"expected at most {scale} decimal places, found {_show(shown)}")
        exact = number.quantize(Decimal(1).scaleb(-scale), ROUND_DOWN, _WIDE)
        if exact != number:
            raise RecordError(f"expected at most {scale} decimal places, found {_show(shown)}")
        return exact
    return number


def _date(value: Any, type_: pa.DataType) -> date:
    if not isinstance(value, str) or isinstance(value, BigInt) or not _DATE_TEXT.fullmatch(value):
        raise RecordError(f"expected an ISO date YYYY-MM-DD, found {_show(value)}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RecordError(f"expected a valid calendar date, found {_show(value)}") from None


def _binary(value: Any, type_: pa.DataType) -> bytes:
    if not isinstance(value, str) or isinstance(value, BigInt):
        raise RecordError(f"expected base64 text, found {_show(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError(f"expected base64 text, found {_show(value)}") from None


def keeps_non_finite(field: pa.Field) -> bool:
    """Whether the job keeps NaN / Infinity in this float field (else: quarantined)."""
    return bool(field.metadata and field.metadata.get(NON_FINITE_KEY) == b"keep")


def field_coercer(field: pa.Field) -> Callable[[Any, pa.DataType], Any]:
    """The per-value check for ``field`` (its type and its non-finite policy)."""
    return _float_keep if keeps_non_finite(field) else coercer(field.type)


@functools.lru_cache(maxsize=1024)  # nested values look their item types up per value
def coercer(type_: pa.DataType) -> Callable[[Any, pa.DataType], Any]:
    """The per-value check for ``type_``; ``TypeError`` for a type no decoder handles."""
    checks: list[tuple[Callable[[pa.DataType], bool], Callable[[Any, pa.DataType], Any]]] = [
        (pa.types.is_integer, _integer),
        (pa.types.is_floating, _float),
        (pa.types.is_string, _string),
        (pa.types.is_boolean, _boolean),
        (pa.types.is_timestamp, _timestamp),
        (pa.types.is_decimal, _decimal),
        (pa.types.is_date32, _date),
        (pa.types.is_binary, _binary),
    ]
    for test, check in checks:
        if test(type_):
            return check
    if is_nested(type_):
        compiled = _compile(type_)
        return lambda value, _type: compiled(value)
    raise TypeError(f"no decoder for Arrow type {type_}")


def is_nested(type_: pa.DataType) -> bool:
    """Whether ``type_`` is a list, struct or map (decoded by a compiled check tree)."""
    return bool(
        pa.types.is_list(type_)
        or pa.types.is_large_list(type_)
        or pa.types.is_struct(type_)
        or pa.types.is_map(type_)
    )


class _AtPath(RecordError):
    """A nested value's error, with the path to it (``[2].qty``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


Check = Callable[[Any], Any]


def _leaf(field: pa.Field) -> tuple[Check, bool]:
    """The check of a nested field's values (built once per type) and whether null is fine."""
    if is_nested(field.type):
        return _compile(field.type), field.nullable
    check, type_ = coercer(field.type), field.type
    return (lambda value: check(value, type_)), field.nullable


def _one(value: Any, check: Check, nullable: bool, where: str | int) -> Any:
    """One nested value through ``check``; errors carry the path to it (an int: list index)."""
    if value is None:
        if not nullable:
            raise _AtPath(_path(where), "required value is missing or null")
        return None
    try:
        return check(value)
    except _AtPath as exc:
        raise _AtPath(_path(where) + exc.path, exc.reason) from None
    except RecordError as exc:
        raise _AtPath(_path(where), str(exc)) from None


def _path(where: str | int) -> str:
    return f"[{where}]" if isinstance(where, int) else where


def _compile(type_: pa.DataType) -> Check:
    """The check of a list, struct or map value: JSON array / object, every leaf checked."""
    if pa.types.is_struct(type_):
        fields = [(f.name, f".{f.name}", *_leaf(f)) for f in type_]

        def struct_(value: Any) -> dict[str, Any]:
            if not isinstance(value, dict):
                raise RecordError(f"expected a JSON object, found {_show(value)}")
            return {
                name: _one(value.get(name), check, nullable, where)
                for name, where, check, nullable in fields
            }

        return struct_
    if pa.types.is_map(type_):
        check, nullable = _leaf(type_.item_field)

        def map_(value: Any) -> list[tuple[str, Any]]:
            if not isinstance(value, dict):
                raise RecordError(f"expected a JSON object, found {_show(value)}")
            return [
                (_one(k, _key, False, f"[{k!r}]"), _one(v, check, nullable, f"[{k!r}]"))
                for k, v in value.items()
            ]

        return map_
    check, nullable = _leaf(type_.value_field)

    def list_(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise RecordError(f"expected a JSON array, found {_show(value)}")
        return [_one(v, check, nullable, i) for i, v in enumerate(value)]

    return list_


def _key(value: Any) -> str:
    return _string(value, _STRING)


_STRING = pa.string()


def physical(type_: pa.DataType) -> pa.DataType:
    """The type values are built in before a cast (timestamps: integers in their unit)."""
    return pa.int64() if pa.types.is_timestamp(type_) else type_


def _show(value: Any) -> str:
    text = str(value) if isinstance(value, BigInt | Decimal) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
