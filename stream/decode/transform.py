"""The user transform (``module:function``, Arrow in, Arrow out), applied with per-record isolation.

One transform is applied identically on the live and the history side (DESIGN §4). Applied to
a batch, a transform that raises is retried record by record so that exactly the records it
fails on are quarantined and the rest of the batch goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pyarrow as pa

from coordinator.core.errors import ConfigError
from coordinator.core.refs import load_function

log = logging.getLogger(__name__)

Transform = Callable[[pa.Table], pa.Table]


def identity(table: pa.Table) -> pa.Table:
    """The default transform."""
    return table


def load_transform(ref: str | None) -> Transform:
    """Import ``module:function``; a clear ``ConfigError`` when it cannot be used."""
    if ref is None:
        return identity
    return load_function(ref, "transform.function")


def apply_transform(
    table: pa.Table, transform: Transform
) -> tuple[pa.Table, list[int] | None, dict[int, str]]:
    """``transform(table)``, isolating the rows it fails on.

    Returns the output, the input row numbers it holds in order (``None``: all of them) and
    ``{row: reason}`` for the rows the transform raised on. A transform must map each row to
    exactly one row.
    """
    if transform is identity:
        return table, None, {}
    try:
        out = transform(table)
    except Exception:
        log.info("transform failed on a batch of %d rows: retrying row by row", table.num_rows)
        return _one_by_one(table, transform)
    _check_rows(out, table.num_rows)
    return out, None, {}


def _one_by_one(
    table: pa.Table, transform: Transform
) -> tuple[pa.Table, list[int] | None, dict[int, str]]:
    outs: list[pa.Table] = []
    kept: list[int] = []
    failed: dict[int, str] = {}
    for i in range(table.num_rows):
        try:
            out = transform(table.slice(i, 1))
        except Exception as exc:
            failed[i] = f"transform: {exc!r}"
            continue
        _check_rows(out, 1)
        outs.append(out)
        kept.append(i)
    if outs:
        return pa.concat_tables(outs), kept, failed
    return _empty_output(table, transform), kept, failed


def _empty_output(table: pa.Table, transform: Transform) -> pa.Table:
    """The transform's output for no rows (its input schema if it cannot take an empty table)."""
    try:
        out = transform(table.slice(0, 0))
    except Exception:
        return table.slice(0, 0)
    _check_rows(out, 0)
    return out


def _check_rows(out: pa.Table, expected: int) -> None:
    if out.num_rows != expected:
        raise ConfigError(
            f"transform returned {out.num_rows} rows for {expected} input rows",
            hint="a transform must map each record to exactly one row (filter in a view)",
        )
