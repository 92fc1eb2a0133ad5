"""Decode benchmark: records/s of the JSON decoder, before (commit d0e016f), Arrow's reader and now.

Run::

    uv run python -m bench.decode --records 1000000

The records are one realistic 8-column order stream (ids, an event time, strings, an int32
quantity, money, a flag), decoded in live-sized batches (``--batch``, the live default 50,000)
with ``decode_columns`` as the live writer calls it, best of ``--repeat`` runs each. Rates are
by the wall clock and per CPU second of this process (threads included: on a shared machine
the CPU figure is the steadier one; the target is 1 M records per CPU second). Columns:
"before" is the old ``stream/decode/json_records.py`` taken from git (``--old-commit``) into a
temporary folder outside the repository and imported from there; "Arrow reader" is today's
decoder with its shape path off (``JsonDecoder(shapes=False)``: Arrow's JSON reader parses
every record); "shapes (now)" is the decoder as it runs (flat records of one shape parsed by a
regex and quote positions); "CPU x" is now over the reader per CPU second. Cases: a clean
stream with ``float64`` money, the same with ``decimal(18,2)`` money (the old fast path did not
take decimals), and a clean stream with one malformed record per batch (the old fast path then
decoded the whole batch record by record; the reader bisects to the culprit; shapes leave only
the culprit to the reader). Each decoder is checked to give the same row and quarantine counts.
Last, records with nested list/struct/map fields (``--reference-records`` of them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa

from stream.decode.json import JsonDecoder, decode_columns
from stream.decode.transform import identity

Decode = Callable[..., tuple[pa.Table, list[Any]]]


def order_schema(money: pa.DataType) -> pa.Schema:
    """Eight columns, as an order stream carries them."""
    return pa.schema(
        [
            pa.field("order_id", pa.int64(), nullable=False),
            pa.field("customer_id", pa.int64()),
            pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
            pa.field("status", pa.string()),
            pa.field("sku", pa.string()),
            pa.field("quantity", pa.int32()),
            pa.field("amount", money),
            pa.field("paid", pa.bool_()),
        ]
    )


def records(n: int, seed: int = 7) -> list[bytes]:
    """``n`` order records as JSON (money as JSON numbers with two decimals)."""
    rng = random.Random(seed)
    statuses = ["new", "paid", "shipped", "cancelled"]
    out = []
    for i in range(n):
        doc = {
            "order_id": i,
            "customer_id": rng.randrange(1, 2_000_000),
            "ts": 1_700_000_000_000 + i * 37,
            "status": rng.choice(statuses),
            "sku": f"SKU-{rng.randrange(100_000):06d}",
            "quantity": rng.randrange(1, 20),
            "amount": f"{rng.randrange(100, 10_000_000) / 100:.2f}",
            "paid": rng.random() < 0.8,
        }
        out.append(json.dumps(doc).replace(f'"{doc["amount"]}"', str(doc["amount"])).encode())
    return out


def old_module(commit: str, folder: Path) -> ModuleType:
    """The decoder module as it was at ``commit``, imported from ``folder`` (not the repo)."""
    text = subprocess.run(
        ["git", "show", f"{commit}:stream/decode/json_records.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = folder / "json_records_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("json_records_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(
    decode: Decode, values: list[bytes], schema: pa.Schema, batch: int
) -> tuple[float, float, int, int]:
    """Records/s over ``values`` in batches by the wall clock and per CPU second (this
    process's CPU time, threads included: the figure a busy shared machine disturbs least),
    plus the row and quarantine counts."""
    rows = bad = 0
    start, cpu = time.perf_counter(), time.process_time()
    for lo in range(0, len(values), batch):
        chunk = values[lo : lo + batch]
        offsets = list(range(lo, lo + len(chunk)))
        table, quarantined = decode([0] * len(chunk), offsets, chunk, schema, identity, "live")
        rows += table.num_rows
        bad += len(quarantined)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(values) / wall, len(values) / cpu, rows, bad


def best(
    decode: Decode, values: list[bytes], schema: pa.Schema, args: Any
) -> tuple[float, float, int, int]:
    """The best of ``--repeat`` runs, by wall and by CPU (the machine is shared: the best run
    is the least disturbed)."""
    runs = [run(decode, values, schema, args.batch) for _ in range(args.repeat)]
    return max(r[0] for r in runs), max(r[1] for r in runs), runs[0][2], runs[0][3]


def poisoned(values: list[bytes], batch: int) -> list[bytes]:
    """One malformed record in the middle of every batch."""
    out = list(values)
    for lo in range(0, len(out), batch):
        out[min(lo + batch // 2, len(out) - 1)] = b'{"order_id": 1, "customer": "\\ud800'
    return out


def mixed(values: list[bytes]) -> list[bytes]:
    """A third of the records with a null ``sku`` (another shape), one in a hundred with an
    ISO-8601 ``ts`` (no shape: Arrow's reader, then the per-record reference)."""
    out = list(values)
    for i in range(0, len(out), 3):
        out[i] = re.sub(rb'"sku": "[^"]*"', b'"sku": null', out[i])
    for i in range(1, len(out), 100):
        out[i] = re.sub(rb'"ts": [0-9]+', b'"ts": "2024-05-01T14:00:00+02:00"', out[i])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--old-commit", default="d0e016f")
    parser.add_argument("--reference-records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    values = records(args.records)
    with tempfile.TemporaryDirectory() as folder:
        old = old_module(args.old_commit, Path(folder))
        cases = [
            ("clean, float64 money", values, order_schema(pa.float64())),
            ("clean, decimal(18,2) money", values, order_schema(pa.decimal128(18, 2))),
            ("1 bad record per batch", poisoned(values, args.batch), order_schema(pa.float64())),
            ("mixed: null skus, ISO times", mixed(values), order_schema(pa.float64())),
        ]
        reader = JsonDecoder(shapes=False).decode_columns
        print(f"{args.records:,} records, batches of {args.batch:,}; rec/s as wall | CPU")
        print(f"{'case':<28}{'before':>20}{'Arrow reader':>20}{'shapes (now)':>20}{'CPU x':>8}")
        for name, vals, schema in cases:
            after = best(decode_columns, vals, schema, args)
            arrow = best(reader, vals, schema, args)
            try:
                before = best(old.decode_columns, vals, schema, args)
                shown = _rates(before)
            except Exception as exc:
                before, shown = after, f"crash ({type(exc).__name__})"
            if not before[2:] == arrow[2:] == after[2:]:
                raise SystemExit(f"{name}: rows/bad differ: {before[2:]} {arrow[2:]} {after[2:]}")
            ratio = after[1] / arrow[1]
            print(f"{name:<28}{shown:>20}{_rates(arrow):>20}{_rates(after):>20}{ratio:>8.2f}")
        ref = JsonDecoder(fast=False).decode_columns
        sample, flat = values[: args.reference_records], order_schema(pa.float64())
        print(f"{'per-record reference only':<28}{_rates(run(ref, sample, flat, args.batch)):>60}")
        nested = nested_records(args.reference_records)
        rate = run(decode_columns, nested, nested_schema(), args.batch)
        print(f"{'nested list/struct/map':<28}{_rates(rate):>60}  (a map: per record)")
        no_map = pa.schema([f for f in nested_schema() if f.name != "prices"])
        fast = run(decode_columns, nested, no_map, args.batch)
        ref_rate = run(JsonDecoder(fast=False).decode_columns, nested, no_map, args.batch)
        print(f"{'nested list/struct':<28}{_rates(ref_rate):>20}{_rates(fast):>40}"
              "  (per-record | vectorised)")  # fmt: skip


def _rates(result: tuple[float, float, int, int]) -> str:
    return f"{result[0] / 1000:,.0f}k | {result[1] / 1000:,.0f}k"


def nested_schema() -> pa.Schema:
    """An order with nested line items, a price map and a shipping struct."""
    from coordinator.core.fieldtypes import field_type

    return pa.schema(
        [
            pa.field("order_id", pa.int64(), nullable=False),
            pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("items", field_type("list<struct<sku: string, qty: int32>>")),
            pa.field("prices", field_type("map<string, decimal(18,2)>")),
            pa.field("ship", field_type("struct<city: string, tags: list<string>>")),
        ]
    )


def nested_records(n: int, seed: int = 7) -> list[bytes]:
    """``n`` records of :func:`nested_schema` (3 items, 2 prices, a shipping struct)."""
    rng = random.Random(seed)
    return [
        json.dumps(
            {
                "order_id": i,
                "ts": 1_700_000_000_000 + i * 37,
                "items": [
                    {"sku": f"SKU-{rng.randrange(100_000):06d}", "qty": rng.randrange(1, 20)}
                    for _ in range(3)
                ],
                "prices": {"eur": rng.randrange(100, 10_000) / 100, "usd": "1.50"},
                "ship": {"city": "Lyon", "tags": ["gift"]},
            }
        ).encode()
        for i in range(n)
    ]


if __name__ == "__main__":
    main()
