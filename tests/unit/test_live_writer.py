"""The one live batch writer, through both engines' entry points, on an in-memory live table.

The fake implements the live-table methods with the real sinks' contract: an append whose
ranges do not start at the table's offsets is a ``CommitConflictError`` (not applied), and a
scripted failure can make a commit land but report ``CommitOutcomeUnknownError``. The same
paths run against real Iceberg/Lance tables in tests/contract/test_live_append.py and
tests/integration/test_live_faust.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from coordinator.core.errors import CommitConflictError, CommitOutcomeUnknownError, LiveError
from coordinator.core.ports import CommitRecord
from coordinator.core.values import CommitToken, Offset, OffsetRange, PartitionId, SnapshotId
from stream.decode.base import Quarantined
from stream.live.core import Batch, BatchLimits
from stream.live.faust_engine import FaustBatchWriter
from stream.live.loop import LiveSettings
from stream.live.writer import BatchWriter

SCHEMA = pa.schema([("id", pa.int64())])
SETTINGS = LiveSettings(
    "orders", "orders", "g", SCHEMA, BatchLimits(100, 1.0), max_commit_attempts=4
)


class FakeLiveTable:
    """Offset-conditional appends in memory; ``script`` makes the next appends fail:
    ``landed`` (commit, then report outcome unknown), ``lost`` (outcome unknown, nothing
    committed), ``conflict`` (a concurrent commit won, nothing committed)."""

    def __init__(self, script: Sequence[str] = ()) -> None:
        self.script = list(script)
        self.offsets: dict[PartitionId, Offset] = {}
        self.rows: list[tuple[int, int, int]] = []  # (partition, offset, id)
        self.commits: dict[str, CommitRecord] = {}
        self.appends = 0

    def live_offsets(self) -> dict[PartitionId, Offset]:
        return dict(self.offsets)

    def find_commit(self, job_id: str, slice_id: str) -> CommitRecord | None:
        return self.commits.get(slice_id)

    def append_live(self, data: pa.Table, token: CommitToken) -> CommitRecord:
        self.appends += 1
        mode = self.script.pop(0) if self.script else "ok"
        if mode in ("lost", "conflict"):
            exc = CommitOutcomeUnknownError if mode == "lost" else CommitConflictError
            raise exc(f"slice_id={token.slice_id}: scripted {mode}")
        for r in token.ranges:
            if self.offsets.get(r.partition, r.start) != r.start:
                raise CommitConflictError(f"partition={r.partition}: offset moved")
        self.commit(data, token)
        if mode == "landed":
            raise CommitOutcomeUnknownError(f"slice_id={token.slice_id}: connection lost")
        return self.commits[token.slice_id]

    def commit(self, data: pa.Table, token: CommitToken) -> None:
        cols = data.to_pydict()
        self.rows += zip(cols["_kafka_partition"], cols["_kafka_offset"], cols["id"], strict=True)
        for r in token.ranges:
            self.offsets[r.partition] = r.end
        record = CommitRecord(token, SnapshotId(len(self.commits) + 1), datetime.now(UTC))
        self.commits[token.slice_id] = record


class Dlq:
    def __init__(self) -> None:
        self.records: list[Quarantined] = []

    def write(self, records: Sequence[Quarantined]) -> None:
        self.records.extend(records)


def events(partition: int, offsets: range) -> list[tuple[int, int, bytes | None]]:
    return [(partition, o, json.dumps({"id": partition * 1000 + o}).encode()) for o in offsets]


def faust(table: FakeLiveTable, waits: list[float]) -> FaustBatchWriter:
    starts = {PartitionId(0): Offset(0), PartitionId(1): Offset(0)}
    return FaustBatchWriter(SETTINGS, table, lambda t: t, starts, Dlq(), sleep=waits.append)


def test_faust_outcome_unknown_but_landed_is_found_by_token_not_written_twice() -> None:
    table = FakeLiveTable(["landed"])
    waits: list[float] = []
    writer = faust(table, waits)
    writer.write(events(0, range(5)) + events(1, range(3)))
    assert table.appends == 1 and waits == []  # looked up, not retried
    assert Counter(table.rows) == Counter({(p, o, p * 1000 + o): 1 for p, n in ((0, 5), (1, 3))
                                           for o in range(n)})  # fmt: skip
    assert table.offsets == {0: 5, 1: 3}
    assert (writer.progress.commits, writer.progress.records) == (1, 8)
    assert writer.progress.committed == {0: 5, 1: 3}
    writer.write(events(0, range(5, 7)))  # the next batch starts where the table ends
    assert table.offsets == {0: 7, 1: 3} and len(table.rows) == 10


def test_faust_outcome_unknown_and_lost_is_retried_after_a_backoff() -> None:
    table = FakeLiveTable(["lost", "lost"])
    waits: list[float] = []
    writer = faust(table, waits)
    writer.write(events(0, range(4)))
    assert table.appends == 3 and len(waits) == 2
    assert 0.025 <= waits[0] <= 0.05 and 0.05 <= waits[1] <= 0.1  # equal jitter, doubling
    assert sorted(o for _, o, _ in table.rows) == [0, 1, 2, 3]
    assert writer.progress.commits == 1


def test_faust_conflicts_wait_then_give_up_and_keep_the_batch() -> None:
    table = FakeLiveTable(["conflict"] * 4)
    waits: list[float] = []
    writer = faust(table, waits)
    with pytest.raises(LiveError, match="job=orders: live commit failed after 4 attempts"):
        writer.write(events(1, range(3)))
    assert table.appends == 4 and len(waits) == 3 and all(w > 0 for w in waits)
    assert table.rows == [] and writer.progress.commits == 0
    writer.write(events(1, range(3, 5)))  # the failed batch was kept: nothing is skipped
    assert sorted(o for _, o, _ in table.rows) == [0, 1, 2, 3, 4] and table.offsets == {1: 5}


def test_faust_partition_another_writer_moved_is_rebuffered_from_the_table_offset() -> None:
    table = FakeLiveTable()
    waits: list[float] = []
    writer = faust(table, waits)  # starts both partitions at 0
    table.offsets[PartitionId(0)] = Offset(3)  # then another worker commits 0..2 of partition 0
    table.rows += [(0, o, o) for o in range(3)]
    writer.write(events(0, range(6)) + events(1, range(2)))
    assert Counter((p, o) for p, o, _ in table.rows) == Counter(
        {(0, o): 1 for o in range(6)} | {(1, o): 1 for o in range(2)}
    )
    assert table.offsets == {0: 6, 1: 2}


def test_confluent_batches_take_the_same_outcome_unknown_path() -> None:
    table = FakeLiveTable(["landed"])
    waits: list[float] = []
    fallback = {PartitionId(0): Offset(10)}
    writer = BatchWriter("orders", 1, SCHEMA, lambda t: t, table, Dlq(), fallback, 4, waits.append)
    values: list[bytes | None] = [json.dumps({"id": i}).encode() for i in range(3)]
    batch = Batch((OffsetRange(PartitionId(0), Offset(10), Offset(13)),),
                  ((PartitionId(0), [10, 11, 12], values),))  # fmt: skip
    outcome = writer.write(batch)
    assert outcome.record is not None and outcome.rows == 3 and waits == []
    assert table.appends == 1 and [o for _, o, _ in table.rows] == [10, 11, 12]
