"""Backfill controls of the job file: per-slice assertions (``[[backfill.assert]]``).

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
from typing import Literal

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


__all__ = ["CHECK_KEYS", "AssertSpec", "CheckName"]
