"""A slice's scope as a table predicate, built structurally (DESIGN §2).

Iceberg predicates are pyiceberg expression trees. Lance needs SQL text for deletes and
``when_not_matched_by_source_delete``: that text is assembled only from validated Python ints
(partitions, offsets, epoch microseconds) and fixed column names and tags, never from strings
taken from input. Scans use pyarrow compute expressions (structural again).
"""

from __future__ import annotations

from datetime import datetime
from functools import reduce
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg import expressions as _iceberg_expressions
from pyiceberg.expressions import BooleanExpression

from coordinator.core import lineage
from coordinator.core.values import OffsetRange, Scope, TimeBucket

_TAGS = ("kafka", "archive")
_SIDES = ("backfill", "live")


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


def iceberg_scope(scope: Scope, event_time: str) -> BooleanExpression:
    """Exactly the rows a slice owns: its offsets (kafka) or its archive bucket."""
    tag = ice_eq(lineage.SOURCE, scope.source)
    if scope.source == "kafka":
        return ice_and(tag, ice_or(*[iceberg_range(r) for r in scope.ranges]))
    assert scope.bucket is not None
    return ice_and(tag, iceberg_bucket(event_time, scope.bucket))


def iceberg_side(side: str) -> BooleanExpression:
    """``_seamline_side = side`` for a known side."""
    if side not in _SIDES:
        raise ValueError(f"expected a side in {_SIDES}, found {side!r}")
    return ice_eq(lineage.SIDE, side)


# -- Lance (SQL from validated ints only) -------------------------------------------------


def _lance_tag(tag: str) -> str:
    if tag not in _TAGS:
        raise ValueError(f"expected a source tag in {_TAGS}, found {tag!r}")
    return f"{lineage.SOURCE} = '{tag}'"


def lance_range(rng: OffsetRange) -> str:
    """SQL for one offset range."""
    p, a, b = _int(rng.partition), _int(rng.start), _int(rng.end)
    return f"({lineage.PARTITION} = {p} AND {lineage.OFFSET} >= {a} AND {lineage.OFFSET} < {b})"


def lance_scope(scope: Scope, event_time: str) -> str:
    """SQL predicate for the rows a slice owns (``event_time`` is a validated identifier)."""
    if not event_time.isidentifier():
        raise ValueError(f"expected a plain column name, found {event_time!r}")
    tag = _lance_tag(scope.source)
    if scope.source == "kafka":
        return f"({tag} AND ({' OR '.join(lance_range(r) for r in scope.ranges)}))"
    assert scope.bucket is not None
    lo, hi = _int(micros(scope.bucket.start)), _int(micros(scope.bucket.end))
    cast = "'Timestamp(Microsecond, Some(\"UTC\"))'"
    return (
        f"({tag} AND {event_time} >= arrow_cast({lo}, {cast}) "
        f"AND {event_time} < arrow_cast({hi}, {cast}))"
    )


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
    return (
        tag
        & (pc.field(event_time) >= pa.scalar(micros(scope.bucket.start), ts))
        & (pc.field(event_time) < pa.scalar(micros(scope.bucket.end), ts))
    )
