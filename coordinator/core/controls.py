"""Backfill controls of the job file: per-slice assertions (``[[backfill.assert]]``) and the
history row filter (``[history] where``).

**Row filter.** ``where`` is a list of conditions, all of which a row must meet (AND)::

    where = [{column = "region", op = "==", value = "eu"},
             {column = "amount", op = ">=", value = 10.0},
             {column = "status", op = "in", value = ["paid", "shipped"]},
             {column = "customer", op = "is not null"}]

``op`` is one of ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=`` (one value), ``in`` /
``not in`` (a list) and ``is null`` / ``is not null`` (no value). Values are converted to the
column's declared type when the job loads (an impossible conversion is a config error) and
become typed pyarrow compute expressions; nothing is ever formatted into a query string. A
null compared with ``==``/``<``/... does not match (SQL semantics). The filter is applied to
the rows a slice would write (after the transform) and identically by the reconciler to the
history source, so filtered-out rows are neither written nor expected; live rows are never
filtered.

Each entry names one ``check`` and the keys it needs (anything else is refused up front):

=====================  ===========================  =========================================
check                  keys                         passes when
=====================  ===========================  =========================================
``min_rows``           ``min``                      the slice holds at least ``min`` rows
``min_rows_per_day``   ``min``                      every UTC day of the slice holds >= ``min``
``max_null_rate``      ``column``, ``max``          nulls / rows <= ``max`` (0..1)
``range``              ``column``, ``min``/``max``  every non-null value is in [min, max]
``unique``             ``column``                   no non-null value occurs twice in the slice
``custom``             ``function``                 ``module:function(table)`` returns None
=====================  ===========================  =========================================

The days of ``min_rows_per_day`` are those of the slice's time bucket for archive slices
(so a day with no rows fails) and, for Kafka slices, every day from the first to the last
event-time day found in the slice. Columns are checked against ``[schema.fields]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CheckName = Literal["min_rows", "min_rows_per_day", "max_null_rate", "range", "unique", "custom"]

#: The keys each check takes besides ``check`` (required ones first; ``range`` needs one of two).
CHECK_KEYS: dict[str, tuple[str, ...]] = {
    "min_rows": ("min",),
    "min_rows_per_day": ("min",),
    "max_null_rate": ("column", "max"),
    "range": ("column", "min", "max"),
    "unique": ("column",),
    "custom": ("function",),
}
_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class AssertSpec(BaseModel):
    """One ``[[backfill.assert]]`` entry (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    check: CheckName
    column: str | None = None
    min: float | None = None
    max: float | None = None
    function: str | None = None
    name: str | None = Field(default=None, max_length=80)  # shown in messages instead of check

    @field_validator("function")
    @classmethod
    def _function(cls, v: str | None) -> str | None:
        if v is not None and not _FUNCTION.match(v):
            raise ValueError(f"expected module.path:function, found {v!r}")
        return v

    @model_validator(mode="after")
    def _keys(self) -> AssertSpec:
        allowed = CHECK_KEYS[self.check]
        given = [k for k in ("column", "min", "max", "function") if getattr(self, k) is not None]
        extra = [k for k in given if k not in allowed]
        if extra:
            raise ValueError(f"check {self.check!r} takes {list(allowed)}, found also {extra}")
        needed = [k for k in allowed if k not in given]
        if self.check == "range":
            needed = [] if ("min" in given or "max" in given) else ["min or max"]
            needed += [] if self.column is not None else ["column"]
        if needed:
            raise ValueError(f"check {self.check!r} needs {needed}")
        self._bounds()
        return self

    def _bounds(self) -> None:
        if self.check in ("min_rows", "min_rows_per_day") and (self.min or 0) < 0:
            raise ValueError(f"expected min >= 0, found min={self.min}")
        if self.check == "max_null_rate" and not 0 <= (self.max or 0) <= 1:
            raise ValueError(f"expected 0 <= max <= 1 (a rate), found max={self.max}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"expected min <= max, found min={self.min} max={self.max}")

    @property
    def label(self) -> str:
        """How messages name this check: ``name`` or ``check[column]``."""
        if self.name:
            return self.name
        return f"{self.check}[{self.column}]" if self.column else self.check


def check_asserts(asserts: Sequence[AssertSpec], schema: pa.Schema) -> None:
    """Every assertion's column is declared (and numeric for ``range``); else ValueError."""
    for i, a in enumerate(asserts):
        key = f"backfill.assert[{i}].column"
        if a.column is not None and a.column not in schema.names:
            raise ValueError(
                f"{key}: unknown column {a.column!r}; declare it in [schema.fields] "
                f"({', '.join(schema.names)})"
            )
        if a.check == "unique" and a.column is not None and _nested(schema.field(a.column).type):
            raise ValueError(
                f"{key}: expected a scalar column for check 'unique', found nested column "
                f"{a.column!r} ({schema.field(a.column).type})"
            )
        if a.check == "range" and a.column is not None:
            t = schema.field(a.column).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
                raise ValueError(
                    f"{key}: expected a numeric column for check 'range', "
                    f"found {a.column!r} of type {t}"
                )


def _nested(type_: pa.DataType) -> bool:
    return bool(pa.types.is_nested(type_))


WhereOp = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in", "is null", "is not null"]
_COMPARE = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}


class WhereSpec(BaseModel):
    """One condition of ``[history] where`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    column: str
    op: WhereOp
    value: Any = None

    @model_validator(mode="after")
    def _value(self) -> WhereSpec:
        if self.op in ("is null", "is not null"):
            if self.value is not None:
                raise ValueError(f"op {self.op!r} takes no value, found {self.value!r}")
        elif self.op in ("in", "not in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(
                    f"op {self.op!r} needs a non-empty list value, found {self.value!r}"
                )
        elif self.value is None or isinstance(self.value, list | dict):
            raise ValueError(f"op {self.op!r} needs one value, found {self.value!r}")
        return self


def _typed(value: Any, type_: pa.DataType, where: str) -> pa.Scalar:
    try:
        if isinstance(value, bool) != pa.types.is_boolean(type_):
            raise TypeError("a boolean only matches a bool column")
        if pa.types.is_integer(type_) and isinstance(value, float):
            raise TypeError("an integer column needs an integer value")
        if isinstance(value, str) and not (pa.types.is_string(type_) or pa.types.is_binary(type_)):
            return pc.cast(pa.scalar(value), type_)  # ISO dates/timestamps, decimals
        return pa.scalar(value, type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError,
            OverflowError) as exc:  # fmt: skip
        raise ValueError(
            f"{where}: expected a value of type {type_}, found {value!r} ({exc})"
        ) from None


def where_condition(
    cond: WhereSpec, schema: pa.Schema, where: str = "history.where"
) -> pc.Expression:
    """One condition as a typed compute expression; ``ValueError`` naming what is wrong."""
    if cond.column not in schema.names:
        raise ValueError(f"{where}: unknown column {cond.column!r}, expected one of {schema.names}")
    type_ = schema.field(cond.column).type
    field = pc.field(cond.column)
    if cond.op == "is null":
        return field.is_null()
    if cond.op == "is not null":
        return field.is_valid()
    if _nested(type_):
        raise ValueError(
            f"{where}: nested column {cond.column!r} ({type_}) can only be tested with "
            f"'is null' / 'is not null', found op {cond.op!r}"
        )
    if cond.op in ("in", "not in"):
        values = pa.array([_typed(v, type_, where).as_py() for v in cond.value], type_)
        found = field.isin(values)
        return found if cond.op == "in" else ~found
    return _COMPARE[cond.op](field, _typed(cond.value, type_, where))


def where_expression(conds: Sequence[WhereSpec], schema: pa.Schema) -> pc.Expression | None:
    """All conditions AND-ed (``None`` when there are none)."""
    expr: pc.Expression | None = None
    for i, cond in enumerate(conds):
        one = where_condition(cond, schema, f"history.where[{i}]")
        expr = one if expr is None else expr & one
    return expr


def apply_where(rows: pa.Table, expr: pc.Expression | None) -> pa.Table:
    """``rows`` meeting ``expr`` (all of them when ``expr`` is None)."""
    return rows if expr is None or rows.num_rows == 0 else rows.filter(expr)


__all__ = [
    "CHECK_KEYS",
    "AssertSpec",
    "CheckName",
    "WhereOp",
    "WhereSpec",
    "apply_where",
    "check_asserts",
    "where_condition",
    "where_expression",
]
