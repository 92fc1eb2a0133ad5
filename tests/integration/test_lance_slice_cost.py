"""A Lance slice overwrite's work follows its scope, not the dataset's size (issue 16 item 1).

The delete is evaluated only on the fragments holding a row of the scope (found by one scan),
and the rows outside the scope (other slices, late live rows of the same day) are untouched.
Real Lance datasets, read back to check.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lance
import pytest
from lance.fragment import LanceFragment

from backfill.sinks.common import MaintenancePolicy
from backfill.sinks.lance.sink import LanceSink
from coordinator.core import lineage
from coordinator.core.values import Scope
from tests.contract.backfill_writers import Rows, make_job, token

pytestmark = pytest.mark.integration


def test_an_overwrite_evaluates_its_delete_on_the_fragments_of_its_scope_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job("lance-overwrite", tmp_path, "127.0.0.1:1", "cost")
    policy = MaintenancePolicy(every_commits=0)
    sink = LanceSink(str(tmp_path / "orders.lance"), job.schema_.arrow_schema(), "ts",
                     maintenance=policy)  # fmt: skip
    sink.ensure_table()
    slices = [Rows(100 * i, 1, 10 * i, 10) for i in range(12)]
    for i, rows in enumerate(slices):
        sink.write_slice(Scope("kafka", ranges=(rows.range,)), rows.table("backfill"),
                         token(f"k{i}", rows.range))  # fmt: skip
    live = Rows(5_000, 1, 120, 10)  # live rows beside the history, same partition and days
    sink.append_live(live.table("live"), token("live-0", live.range, side="live"))
    assert len(lance.dataset(sink.uri).get_fragments()) == 13

    evaluated: list[int] = []
    real = LanceFragment.delete

    def counting(self: LanceFragment, predicate: str) -> object:
        evaluated.append(self.fragment_id)
        return real(self, predicate)

    monkeypatch.setattr(LanceFragment, "delete", counting)
    again = slices[5]
    sink.write_slice(Scope("kafka", ranges=(again.range,)), again.table("backfill"),
                     token("k5", again.range, attempt=2))  # fmt: skip
    assert len(evaluated) == 1  # the one fragment holding k5's rows, not all 13

    data = lance.dataset(sink.uri).to_table(columns=[lineage.PARTITION, lineage.OFFSET])
    pairs = zip(data[lineage.PARTITION].to_pylist(), data[lineage.OFFSET].to_pylist(), strict=True)
    assert Counter(pairs) == Counter({(1, o): 1 for o in range(130)})
