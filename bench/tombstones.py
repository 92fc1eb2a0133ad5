"""Null-value tombstone decoding: records/s of a keyed JSON stream, with and without
``[table] delete_when = { null_value = true }``, and the ratio to the plain decoder.

Run::

    uv run python -m bench.tombstones --records 200000

Keyed records (the key is ``[schema.kafka] order_id = "key"``, a string column) decoded with
the job's decoder (:func:`stream.decode.decoder_for`) through ``decode_columns`` as the live
writer calls it, in live-sized batches (``--batch``), best of ``--repeat`` runs. Cases: the
plain job (null values quarantined) and the tombstone job, each with no null values and with
``--null-share`` of them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from coordinator.core.jobspec import JobSpec, parse_job
from stream.decode import decoder_for
from stream.decode.kafka_meta import carry_all
from stream.decode.transform import identity

TS = 1_700_000_000_000


def _job(tombstones: bool) -> JobSpec:
    table: dict[str, Any] = {"format": "lance", "uri": "t.lance", "key": ["order_id"]}
    if tombstones:
        table["delete_when"] = {"null_value": True}
    doc = {
        "stream": {"bootstrap": "b:9092", "topic": "t"},
        "schema": {"fields": {"order_id": "string", "amount": "float64", "ts": "timestamp_ms"},
                   "event_time": "ts", "required": ["order_id"], "kafka": {"order_id": "key"}},
        "table": table,
        "backfill": {"mode": "merge"},
    }  # fmt: skip
    return parse_job(doc, base_dir=Path("."), default_id="bench")


def _records(n: int, null_share: float) -> list[tuple[bytes | None, bytes, None, int]]:
    every = round(1 / null_share) if null_share else 0
    out = []
    for i in range(n):
        value = json.dumps({"amount": i * 0.5, "ts": TS + i}).encode()
        out.append((None if every and i % every == 0 else value, f"c-{i % 5000}".encode(), None,
                    TS + i))  # fmt: skip
    return out


def _rate(job: JobSpec, records: list[Any], batch: int, repeat: int) -> tuple[float, int, int]:
    decoder = decoder_for("json", job)
    schema = job.schema_.arrow_schema()
    nulls = job.table.delete_when is not None
    best, rows, bad = float("inf"), 0, 0
    for _ in range(repeat):
        rows = bad = 0
        start = time.perf_counter()
        for lo in range(0, len(records), batch):
            chunk = records[lo : lo + batch]
            values = carry_all(chunk, nulls=nulls)  # as the live loop buffers them
            n = len(chunk)
            table, quarantined = decoder.decode_columns(
                [0] * n, list(range(lo, lo + n)), values, schema, identity, "live"
            )
            rows, bad = rows + table.num_rows, bad + len(quarantined)
        best = min(best, time.perf_counter() - start)
    return len(records) / best, rows, bad


def main() -> None:
    """Print records/s per case and the ratio to the plain decoder on the same records."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--null-share", type=float, default=0.1)
    args = parser.parse_args()
    for share in (0.0, args.null_share):
        records = _records(args.records, share)
        plain = _rate(_job(False), records, args.batch, args.repeat)
        tomb = _rate(_job(True), records, args.batch, args.repeat)
        print(f"null values {share:4.0%}: plain {plain[0] / 1e3:7.1f} k rec/s "
              f"(rows={plain[1]} quarantined={plain[2]}); null_value tombstones "
              f"{tomb[0] / 1e3:7.1f} k rec/s (rows={tomb[1]} quarantined={tomb[2]}); "
              f"ratio {tomb[0] / plain[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
