"""Deterministic synthetic order data for ``seamline demo`` and the end-to-end tests.

Three years of orders: the oldest part is written as Parquet archive files (one per month),
the newer part is produced to the topic, and a live producer keeps adding current orders.
Everything derives from a seed, so a run can be repeated exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ORDER_FIELDS: dict[str, str] = {
    "order_id": "int64",
    "customer": "string",
    "amount": "float64",
    "currency": "string",
    "status": "string",
    "ts": "timestamp_ms",
}
_CURRENCIES = np.array(["EUR", "USD", "GBP", "CHF"])
_STATUSES = np.array(["placed", "paid", "shipped", "delivered", "returned"])


@dataclass(frozen=True)
class DemoWindow:
    """The demo's time line: archive ``[start, archive_end)``, topic ``[archive_end, end)``."""

    start: datetime
    archive_end: datetime
    end: datetime

    @classmethod
    def three_years(cls, end: datetime, topic_days: int = 120) -> DemoWindow:
        """Three years up to ``end`` (midnight UTC), the newest ``topic_days`` in the topic."""
        end = end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return cls(end - timedelta(days=3 * 365), end - timedelta(days=topic_days), end)


def orders(first_id: int, n: int, start: datetime, end: datetime, seed: int) -> pa.Table:
    """``n`` orders with ids ``first_id..`` and event times spread over ``[start, end)``."""
    rng = np.random.default_rng(seed)
    lo = int(start.timestamp() * 1000)
    hi = int(end.timestamp() * 1000)
    ts = np.sort(rng.integers(lo, hi, size=n, dtype=np.int64))
    return pa.table(
        {
            "order_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
            "customer": pa.array([f"c{c:05d}" for c in rng.integers(0, 20_000, size=n)]),
            "amount": pa.array(np.round(rng.gamma(2.0, 40.0, size=n), 2)),
            "currency": pa.array(_CURRENCIES[rng.integers(0, len(_CURRENCIES), size=n)]),
            "status": pa.array(_STATUSES[rng.integers(0, len(_STATUSES), size=n)]),
            "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        }
    )


def normalise(table: pa.Table) -> pa.Table:
    """The demo job's transform: currency codes upper-case, amounts rounded to cents.

    Deterministic and row-wise, so live and history yield the same row for the same record.
    """
    for name, fix in (("currency", pc.utf8_upper), ("amount", lambda a: pc.round(a, 2))):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), fix(table.column(i)))
    return table


def normalise_buggy(table: pa.Table) -> pa.Table:
    """A broken release of :func:`normalise` (amounts in cents): ``seamline demo --reprocess``
    rewrites one week with it to show reconciliation catching it and a reprocess repairing it."""
    table = normalise(table)
    i = table.schema.get_field_index("amount")
    return table.set_column(i, table.schema.field(i), pc.multiply(table.column(i), 100.0))


def write_archive(table: pa.Table, folder: Path) -> list[Path]:
    """Write ``table`` as one Parquet file per month of ``ts`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    months = pc.strftime(table["ts"], format="%Y-%m")
    paths = []
    for month in sorted(set(months.to_pylist())):
        part = table.filter(pc.equal(months, month))
        path = folder / f"orders-{month}.parquet"
        pq.write_table(part, path)
        paths.append(path)
    return paths


def to_json_messages(table: pa.Table) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` JSON messages for ``table`` (timestamps as epoch milliseconds)."""
    ts_ms = table["ts"].cast(pa.int64()).to_pylist()
    for row, ms in zip(table.to_pylist(), ts_ms, strict=True):
        row["ts"] = ms
        yield str(row["order_id"]).encode(), json.dumps(row, separators=(",", ":")).encode()
