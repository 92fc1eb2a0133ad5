"""The Faust engine never starts below the current cut's hwm (issue: a new cut after live)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from coordinator.core.errors import LiveError
from coordinator.core.values import Offset, PartitionId
from stream.live import faust_engine
from stream.live.core import BatchLimits, below_cut
from stream.live.loop import LiveSettings
from tests.unit.test_live_writer import FakeLiveTable

SETTINGS = LiveSettings("orders", "orders", "g", pa.schema([("id", pa.int64())]),
                        BatchLimits(100, 1.0))


class _Reached(Exception):
    """The worker got past its start checks to building the Faust app."""


def test_below_cut_names_only_partitions_under_the_hwm() -> None:
    positions = {PartitionId(0): Offset(150), PartitionId(1): Offset(40), PartitionId(2): Offset(5)}
    hwm = {PartitionId(0): Offset(200), PartitionId(1): Offset(40), PartitionId(2): Offset(3)}
    assert below_cut(positions, hwm) == {PartitionId(0): (Offset(150), Offset(200))}


def test_faust_refuses_a_table_offset_below_a_new_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    table = FakeLiveTable()
    table.offsets = {PartitionId(0): Offset(150)}  # live stopped at 150, then a cut at 200
    touched: list[str] = []
    monkeypatch.setattr(faust_engine, "commit_group_offsets", lambda *a: touched.append("kafka"))
    with pytest.raises(LiveError) as info:
        faust_engine.run_worker(SETTINGS, {}, table, lambda t: t,
                                {PartitionId(0): Offset(200)}, quarantine=None)  # type: ignore[arg-type]
    assert "partition=0 start=150 hwm=200" in str(info.value)
    assert touched == [], "nothing may reach Kafka or the group offsets before the refusal"


def test_faust_starts_normally_at_or_after_the_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    table = FakeLiveTable()
    table.offsets = {PartitionId(0): Offset(250)}
    seen: list[object] = []
    monkeypatch.setattr(faust_engine, "commit_group_offsets", lambda *a: seen.append(a[-1]))

    def stop_before_faust(*_: object) -> None:
        raise _Reached

    monkeypatch.setattr(faust_engine, "build_app", stop_before_faust)
    with pytest.raises(_Reached):
        faust_engine.run_worker(SETTINGS, {}, table, lambda t: t,
                                {PartitionId(0): Offset(200)}, quarantine=None)  # type: ignore[arg-type]
    assert seen == [{PartitionId(0): Offset(250)}]
