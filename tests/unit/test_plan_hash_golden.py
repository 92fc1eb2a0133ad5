"""Plan hashes are stored with every cut: a change to how the planner computes them must keep
every value identical, or stored plans stop matching on resume. The golden values below were
computed with the planner before the plan-hash performance work (issue 19)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.values import Cut, Epoch, Offset, PartitionCut, PartitionId, Slice
from coordinator.plan.planner import ArchiveFile, BucketUnit, Plan, make_plan
from coordinator.state.codec import slice_to_json
from tests.unit.test_planner import UNITS, archive_files, bounded_size, partition_cuts

T0 = datetime(2020, 1, 1, tzinfo=UTC)
PARTS = tuple(
    PartitionCut(PartitionId(p), Offset(1000 * p), Offset(1000 * p + 25 + p)) for p in range(3)
)
CUT = Cut("golden", "orders", PARTS, T0, Epoch(1))
FILES = [
    ArchiveFile("b.parquet", T0 - timedelta(days=3), T0 - timedelta(hours=1), 100, 4000),
    ArchiveFile("a.parquet", T0 - timedelta(days=1, hours=5), T0 - timedelta(minutes=1), 50, 2000),
]
BIG = tuple(PartitionCut(PartitionId(p), Offset(7 * p), Offset(7 * p + 3001)) for p in range(4))
ODD = [ArchiveFile('dir/ü "x"\\.parquet', T0, T0 + timedelta(hours=30), 9, 90)]


def _plans() -> dict[str, Plan]:
    return {
        "kafka": make_plan(CUT, 7),
        "archive+kafka": make_plan(CUT, 7, FILES, "day"),
        "archive-hours": make_plan(CUT, 10, FILES, "hour", include_kafka=False),
        "empty": make_plan(Cut("golden", "orders", (), T0, Epoch(1)), 7),
        "1,204 slices": make_plan(Cut("golden-big", "orders", BIG, T0, Epoch(2)), 10),
        "non-ascii, quotes": make_plan(Cut('j"ü', "t/ü", PARTS[:1], T0, Epoch(1)), 5, ODD, "month"),
    }


GOLDEN = {
    "kafka": "a8f7a8bf74e345585eb1d040b2330e5ab040c018acbe56e9fd3b18124ffe0078",
    "archive+kafka": "0f60436532b8c811c2f43fc299d6f8e54f8fead95c44e59eee5128c27d13472e",
    "archive-hours": "b11fb8ca25417930cdd558512d47722a20d24d2167004381d59b5ff8a3f70469",
    "empty": "9b7392b28fc693e7173b05189f55f8cf121afc90992f8d5f0ac6080b7330a0a2",
    "1,204 slices": "c1939617db30fa15e4f4dcb3df3dd6a116f012b97f3a7220c36e4cf8ec67ec0b",
    "non-ascii, quotes": "f8078e3e21c95e4687c3d91d2e4f917a0a793cab10eef34731f6d9006d3bb0b6",
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_plan_hash_equals_the_value_stored_plans_carry(name: str) -> None:
    plan = _plans()[name]
    assert plan.plan_hash == GOLDEN[name], f"plan={name}: expected {GOLDEN[name]}"


def test_the_big_golden_plan_has_the_slices_it_names() -> None:
    assert len(_plans()["1,204 slices"].slices) == 4 * 301


def _reference_hash(cut: Cut, slices: Sequence[Slice]) -> str:
    """The plan hash as the planner computed it before issue 19 (one ``json.dumps``)."""
    doc = {
        "job_id": cut.job_id,
        "topic": cut.topic,
        "partitions": [[p.partition, p.log_start, p.hwm] for p in cut.partitions],
        "slices": [
            {k: v for k, v in slice_to_json(s).items() if k not in ("est_rows", "est_bytes")}
            for s in slices
        ],
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


@given(partition_cuts(), st.integers(1, 10**5), archive_files(), st.sampled_from(UNITS), st.text())
def test_plan_hash_equals_the_reference_encoding(
    parts: tuple[PartitionCut, ...],
    size: int,
    files: list[ArchiveFile],
    unit: BucketUnit,
    job_id: str,
) -> None:
    cut = Cut(job_id or "j", "orders", parts, T0, Epoch(1))
    plan = make_plan(cut, bounded_size(parts, size), files, unit)
    assert plan.plan_hash == _reference_hash(cut, plan.slices)
