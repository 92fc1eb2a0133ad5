"""Helpers for the writer contract suite: jobs for the four writers, rows, child processes.

Child-process entry points live here (not in the test module) so that ``spawn`` children can
import them cheaply.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from backfill.executor import execute_slice
from backfill.sinks import open_sink
from coordinator.core import faults, lineage
from coordinator.core.jobspec import JobSpec, parse_job
from coordinator.core.ports import TableSink
from coordinator.core.values import CommitToken, Epoch, Offset, OffsetRange, PartitionId, Slice
from stream.decode.base import add_lineage

WRITERS = ("iceberg-overwrite", "iceberg-merge", "lance-overwrite", "lance-merge")
#: The in-memory table fake (tests/fakes/table.py) in both modes: held to the same contract.
FAKE_WRITERS = ("fake-overwrite", "fake-merge")
#: Writers on the real servers of the session fixtures: ``@rest`` is Iceberg on the REST
#: catalog (``iceberg_rest_catalog``, its warehouse a bucket on ``s3_server``), ``@s3`` is the
#: table on S3 (``s3_server``: an Iceberg warehouse behind the SQL catalog, a Lance dataset).
#: A few parametrisations, not the full cross product, to keep the suite's time reasonable.
SERVER_WRITERS = ("iceberg-overwrite@rest", "iceberg-merge@s3", "lance-overwrite@s3")
DAY0 = datetime(2024, 3, 1, tzinfo=UTC)
SORT = [lineage.SOURCE, lineage.SIDE, lineage.PARTITION, lineage.OFFSET, "order_id"]


def make_job(
    writer: str, root: Path, bootstrap: str, topic: str, *, rest: Any = None, s3: Any = None
) -> JobSpec:
    """A job for one of :data:`WRITERS` with its table under ``root`` (a fake writer gets a
    Lance job: the fake takes its schema, event time, mode and key from it).

    ``<writer>@rest`` puts the table in a fresh namespace of the REST catalog ``rest`` (a
    ``RestCatalogServer``; its warehouse is on ``s3``); ``<writer>@s3`` puts the Iceberg
    warehouse or the Lance dataset in a fresh bucket of the S3 server ``s3`` (an ``S3Server``).
    """
    writer, _, where = writer.partition("@")
    fmt, mode = writer.split("-")
    fmt = "lance" if fmt == "fake" else fmt
    table: dict[str, Any] = {"format": fmt, "key": ["order_id"], "partition_by": "day"}
    if where == "rest":
        assert rest is not None and s3 is not None, "a REST writer needs both server fixtures"
        table |= {
            "identifier": f"contract_{uuid.uuid4().hex[:10]}.orders",
            "catalog": {"type": "rest", "uri": rest.uri},
            "storage": s3.storage(),
        }
    elif where == "s3":
        from backfill.sinks.s3_server.local import create_bucket

        assert s3 is not None, "an S3 writer needs the s3_server fixture"
        bucket = create_bucket(s3, f"contract-{uuid.uuid4().hex[:10]}")
        table |= {"storage": s3.storage()}
        if fmt == "iceberg":
            table |= {
                "identifier": "contract.orders",
                "catalog": {
                    "type": "sql", "uri": f"sqlite:///{root / 'catalog.db'}",
                    "warehouse": f"{bucket}/warehouse",
                },
            }  # fmt: skip
        else:
            table |= {"uri": f"{bucket}/orders.lance"}
    elif fmt == "iceberg":
        (root / "warehouse").mkdir(parents=True, exist_ok=True)
        table |= {
            "identifier": "contract.orders",
            "catalog_uri": f"sqlite:///{root / 'catalog.db'}",
            "warehouse": (root / "warehouse").as_uri(),
        }
    else:
        table |= {"uri": str(root / "orders.lance")}
    doc = {
        "job": {"id": "contract"},
        "stream": {"bootstrap": bootstrap, "topic": topic},
        "schema": {
            "fields": {"order_id": "int64", "amount": "float64", "ts": "timestamp_ms"},
            "required": ["order_id"],
            "event_time": "ts",
        },
        "table": table,
        "backfill": {"mode": mode},
    }
    return parse_job(doc, base_dir=root, default_id="contract")


def servers_for(writer: str, request: Any) -> dict[str, Any]:
    """``make_job`` keywords for ``writer``'s servers: the session fixtures start only when a
    server writer runs (``request`` is the test's ``pytest.FixtureRequest``)."""
    if writer.endswith("@rest"):
        return {
            "rest": request.getfixturevalue("iceberg_rest_catalog"),
            "s3": request.getfixturevalue("s3_server"),
        }
    if writer.endswith("@s3"):
        return {"s3": request.getfixturevalue("s3_server")}
    return {}


@dataclass(frozen=True)
class Rows:
    """Synthetic order rows: ``order_id = base + i``, one per offset."""

    base: int
    partition: int
    start: int
    count: int
    day: int = 0

    def records(self) -> list[dict[str, Any]]:
        """JSON documents as a producer would send them."""
        t0 = DAY0 + timedelta(days=self.day)
        return [
            {
                "order_id": self.base + i,
                "amount": round(1.5 * i, 2),
                "ts": int((t0 + timedelta(minutes=i)).timestamp() * 1000),
            }
            for i in range(self.count)
        ]

    def table(self, side: str, source: str = "kafka") -> pa.Table:
        """Rows with lineage as a writer receives them."""
        docs = self.records()
        user = pa.table(
            {
                "order_id": pa.array([d["order_id"] for d in docs], pa.int64()),
                "amount": pa.array([d["amount"] for d in docs], pa.float64()),
                "ts": pa.array([d["ts"] for d in docs], pa.int64()).cast(
                    pa.timestamp("ms", tz="UTC")
                ),
            }
        )
        if source == "archive":
            return add_lineage(user, None, None, "archive", "backfill")
        parts = pa.array([self.partition] * self.count, pa.int32())
        offs = pa.array(range(self.start, self.start + self.count), pa.int64())
        return add_lineage(user, parts, offs, "kafka", side)  # type: ignore[arg-type]

    @property
    def range(self) -> OffsetRange:
        """The offsets these rows occupy."""
        return OffsetRange(
            PartitionId(self.partition), Offset(self.start), Offset(self.start + self.count)
        )


def token(
    slice_id: str, rng: OffsetRange | None, side: str = "backfill", attempt: int = 1
) -> CommitToken:
    """A commit token for the contract job."""
    return CommitToken(
        job_id="contract",
        slice_id=slice_id,
        attempt=attempt,
        epoch=Epoch(1),
        side="live" if side == "live" else "backfill",
        ranges=(rng,) if rng is not None else (),
    )


def content(job: JobSpec) -> list[dict[str, Any]]:
    """The whole table, sorted canonically."""
    return content_of(open_sink(job))


def content_of(sink: TableSink) -> list[dict[str, Any]]:
    """The whole table behind ``sink``, sorted canonically."""
    table = sink.scan()
    rows: list[dict[str, Any]] = table.sort_by([(c, "ascending") for c in SORT]).to_pylist()
    return rows


def live_appender(job: JobSpec, batches: list[Rows], ready: Any) -> None:
    """Child process: append each batch as a live micro-batch (signals ``ready`` first)."""
    sink = open_sink(job)
    ready.set()
    for i, rows in enumerate(batches):
        sink.append_live(rows.table("live"), token(f"live-{i}", rows.range, side="live"))


def crashing_executor(job: JobSpec, slice_: Slice, tok: CommitToken, crash_at: str) -> None:
    """Child process: run the slice and SIGKILL at ``crash_at``."""
    faults.arm(crash_at)
    execute_slice(job, slice_, tok)


def produce(bootstrap: str, topic: str, rows: Rows) -> None:
    """Produce ``rows`` to their partition (offsets start at 0 on a fresh topic)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for doc in rows.records():
        producer.produce(topic, json.dumps(doc).encode(), partition=rows.partition)
    producer.flush(30)
