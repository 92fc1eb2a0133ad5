"""A slice's scope as a table predicate, built structurally (DESIGN §2).

Iceberg predicates are pyiceberg expression trees. Lance needs SQL text for deletes and
``when_not_matched_by_source_delete``: that text is assembled from typed parts only, every
identifier quoted (:func:`lance_ident`) and every literal typed (:func:`lance_int`,
:func:`lance_str`, :func:`lance_time`), so a column named ``current_timestamp``, ``null`` or
``MixedCase`` stays a column. Scans use pyarrow compute expressions (structural again).
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import reduce
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg import expressions as _iceberg_expressions
from pyiceberg.expressions import BooleanExpression

from coordinator.core import lineage
from coordinator.core.values import OffsetRange, Scope, SliceKey, TimeBucket

_TAGS = ("kafka", "archive")
_SIDES = ("backfill", "live")
_DEFAULT_TIME = pa.timestamp("us", tz="UTC")


def micros(ts: datetime) -> int:
    """Epoch microseconds of an aware datetime (validated by ``TimeBucket``)."""
    delta = ts - datetime(1970, 1, 1, tzinfo=ts.tzinfo)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _int(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int, found {value!r}")
    return int(value)


# -- Iceberg ------------------------------------------------------------------------------

# pyiceberg's expression classes are pydantic models whose positional constructors mypy
# cannot see; these thin typed wrappers are the only place they are called.
_ix: Any = _iceberg_expressions


def ice_eq(term: str, value: object) -> BooleanExpression:
    """``term = value``."""
    out: BooleanExpression = _ix.EqualTo(term, value)
    return out


def ice_ge(term: str, value: object) -> BooleanExpression:
    """``term >= value``."""
    out: BooleanExpression = _ix.GreaterThanOrEqual(term, value)
    return out


def ice_lt(term: str, value: object) -> BooleanExpression:
    """``term < value``."""
    out: BooleanExpression = _ix.LessThan(term, value)
    return out


def ice_le(term: str, value: object) -> BooleanExpression:
    """``term <= value``."""
    out: BooleanExpression = _ix.LessThanOrEqual(term, value)
    return out


def ice_in(term: str, values: set[Any]) -> BooleanExpression:
    """``term IN values``."""
    out: BooleanExpression = _ix.In(term, values)
    return out


def ice_and(*parts: BooleanExpression) -> BooleanExpression:
    """Conjunction of ``parts`` (at least one)."""
    out: BooleanExpression = reduce(_ix.And, parts)
    return out


def ice_or(*parts: BooleanExpression) -> BooleanExpression:
    """Disjunction of ``parts`` (at least one)."""
    out: BooleanExpression = reduce(_ix.Or, parts)
    return out


def ice_not(part: BooleanExpression) -> BooleanExpression:
    """Negation."""
    out: BooleanExpression = _ix.Not(part)
    return out


def ice_true() -> BooleanExpression:
    """Always true."""
    out: BooleanExpression = _ix.AlwaysTrue()
    return out


def iceberg_range(rng: OffsetRange) -> BooleanExpression:
    """``_kafka_partition = p AND start <= _kafka_offset < end``."""
    return ice_and(
        ice_eq(lineage.PARTITION, _int(rng.partition)),
        ice_ge(lineage.OFFSET, _int(rng.start)),
        ice_lt(lineage.OFFSET, _int(rng.end)),
    )


def iceberg_bucket(event_time: str, bucket: TimeBucket) -> BooleanExpression:
    """``start <= event_time < end`` (epoch-microsecond literals)."""
    return ice_and(
        ice_ge(event_time, micros(bucket.start)),
        ice_lt(event_time, micros(bucket.end)),
    )


def _key_values(key: SliceKey) -> list[str | int]:
    """The key's values, each checked to be a str or an int (never a bool)."""
    out: list[str | int] = []
    for v in key.values:
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise TypeError(f"expected a str or int key value, found {v!r}")
        out.append(v)
    return out


def iceberg_key(key: SliceKey) -> BooleanExpression:
    """``column = value`` or ``column IN (values)`` (typed literals, no text)."""
    values = _key_values(key)
    return ice_eq(key.column, values[0]) if len(values) == 1 else ice_in(key.column, set(values))


def iceberg_scope(scope: Scope, event_time: str) -> BooleanExpression:
    """Exactly the rows a slice owns: its offsets (kafka) or its archive bucket (and key)."""
    tag = ice_eq(lineage.SOURCE, scope.source)
    if scope.source == "kafka":
        return ice_and(tag, ice_or(*[iceberg_range(r) for r in scope.ranges]))
    assert scope.bucket is not None
    parts = [tag, iceberg_bucket(event_time, scope.bucket)]
    if scope.key is not None:
        parts.append(iceberg_key(scope.key))
    return ice_and(*parts)


def iceberg_side(side: str) -> BooleanExpression:
    """``_seamline_side = side`` for a known side."""
    if side not in _SIDES:
        raise ValueError(f"expected a side in {_SIDES}, found {side!r}")
    return ice_eq(lineage.SIDE, side)


# -- Lance (SQL text from typed parts) ----------------------------------------------------
#
# Lance's DataFusion filter dialect quotes identifiers with backticks (a double-quoted
# "name" is read as a string there), so every column name is emitted as `name`: keywords
# (`current_timestamp`, `null`, `date`, `true`, `interval`, ...) and mixed-case names stay
# column references. Lance cannot address a column whose name holds a backtick at all (not
# even to project it), so such a name is refused. Literals are typed: strings quoted with
# '' escaping, ints validated, times cast to the column's exact Arrow type.

_TIME_UNITS = {"s": ("Second", 1_000_000), "ms": ("Millisecond", 1_000), "us": ("Microsecond", 1)}
_TZ = re.compile(r"^[A-Za-z0-9_+:./-]{1,64}$")
_DAY_US = 86_400 * 1_000_000


def lance_ident(name: str) -> str:
    """A column name as a quoted Lance/DataFusion identifier."""
    if not isinstance(name, str) or not name or "`" in name:
        raise ValueError(
            f"expected a column name without a backtick (Lance cannot address one), found {name!r}"
        )
    return f"`{name}`"


def lance_str(value: str) -> str:
    """A string literal, single quotes doubled."""
    if not isinstance(value, str):
        raise TypeError(f"expected a str, found {value!r}")
    return "'" + value.replace("'", "''") + "'"


def lance_int(value: int) -> str:
    """An integer literal."""
    return str(_int(value))


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def lance_time(value: datetime, column_type: pa.DataType) -> str:
    """``value`` as a literal of ``column_type`` (timestamp of any unit, or date32).

    The literal is the smallest column value ``>= value``, so ``col >= lit`` and ``col < lit``
    mean exactly ``col >= value`` and ``col < value`` for every value the column can hold.
    """
    us = micros(value)
    if pa.types.is_date32(column_type):
        return f"arrow_cast({_ceil_div(us, _DAY_US)}, 'Date32')"
    if not pa.types.is_timestamp(column_type):
        raise ValueError(f"expected a timestamp or date32 event-time column, found {column_type}")
    assert isinstance(column_type, pa.TimestampType)
    if column_type.unit == "ns":
        name, number = "Nanosecond", us * 1_000
    else:
        name, per = _TIME_UNITS[column_type.unit]
        number = _ceil_div(us, per)
    tz = column_type.tz
    if tz is not None and not _TZ.match(tz):
        raise ValueError(f"expected a time zone name, found {tz!r}")
    zone = f'Some("{tz}")' if tz is not None else "None"
    return f"arrow_cast({number}, 'Timestamp({name}, {zone})')"


def _lance_tag(tag: str) -> str:
    if tag not in _TAGS:
        raise ValueError(f"expected a source tag in {_TAGS}, found {tag!r}")
    return f"{lance_ident(lineage.SOURCE)} = {lance_str(tag)}"


def lance_range(rng: OffsetRange) -> str:
    """SQL for one offset range."""
    part, off = lance_ident(lineage.PARTITION), lance_ident(lineage.OFFSET)
    p, a, b = lance_int(rng.partition), lance_int(rng.start), lance_int(rng.end)
    return f"({part} = {p} AND {off} >= {a} AND {off} < {b})"


def lance_bucket(event_time: str, bucket: TimeBucket, column_type: pa.DataType) -> str:
    """``start <= event_time < end`` with literals of the column's type."""
    col = lance_ident(event_time)
    lo, hi = lance_time(bucket.start, column_type), lance_time(bucket.end, column_type)
    return f"{col} >= {lo} AND {col} < {hi}"


def lance_key(key: SliceKey) -> str:
    """`` `column` IN (typed literals) `` (strings quoted, ints validated)."""
    lits = [lance_str(v) if isinstance(v, str) else lance_int(v) for v in _key_values(key)]
    return f"{lance_ident(key.column)} IN ({', '.join(lits)})"


def lance_scope(scope: Scope, event_time: str, column_type: pa.DataType = _DEFAULT_TIME) -> str:
    """SQL predicate for the rows a slice owns; ``column_type`` is ``event_time``'s type."""
    tag = _lance_tag(scope.source)
    if scope.source == "kafka":
        return f"({tag} AND ({' OR '.join(lance_range(r) for r in scope.ranges)}))"
    assert scope.bucket is not None
    bucket = lance_bucket(event_time, scope.bucket, column_type)
    if scope.key is not None:
        return f"({tag} AND {bucket} AND {lance_key(scope.key)})"
    return f"({tag} AND {bucket})"


def lance_side(side: str, qualifier: str | None = None) -> str:
    """``[qualifier.]_seamline_side = side`` for a known side (``target`` in merges)."""
    if side not in _SIDES:
        raise ValueError(f"expected a side in {_SIDES}, found {side!r}")
    col = lance_ident(lineage.SIDE)
    if qualifier is not None:
        col = f"{lance_ident(qualifier)}.{col}"
    return f"{col} = {lance_str(side)}"


# -- Arrow (scans) ------------------------------------------------------------------------


def arrow_scope(scope: Scope, event_time: str) -> pc.Expression:
    """The same predicate as a pyarrow compute expression."""
    tag = pc.field(lineage.SOURCE) == pa.scalar(scope.source)
    if scope.source == "kafka":
        parts = [
            (pc.field(lineage.PARTITION) == pa.scalar(_int(r.partition), pa.int32()))
            & (pc.field(lineage.OFFSET) >= pa.scalar(_int(r.start), pa.int64()))
            & (pc.field(lineage.OFFSET) < pa.scalar(_int(r.end), pa.int64()))
            for r in scope.ranges
        ]
        return tag & reduce(lambda x, y: x | y, parts)
    assert scope.bucket is not None
    ts = pa.timestamp("us", tz="UTC")
    expr = (
        tag
        & (pc.field(event_time) >= pa.scalar(micros(scope.bucket.start), ts))
        & (pc.field(event_time) < pa.scalar(micros(scope.bucket.end), ts))
    )
    return expr if scope.key is None else expr & arrow_key(scope.key)


def arrow_key(key: SliceKey) -> pc.Expression:
    """``column IN values`` as a compute expression (a string or int64 value set)."""
    values = _key_values(key)
    kind = pa.string() if isinstance(values[0], str) else pa.int64()
    return pc.field(key.column).isin(pa.array(values, kind))
