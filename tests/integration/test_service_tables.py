"""The composition root's table wiring, on real Iceberg (SQL catalog) and Lance tables.

* ``open_live_sink`` ensures what live appends need as the live table's own ensure step (no
  format check in the service): an Iceberg table created elsewhere without the maintenance
  properties gets them; a missing Lance dataset is created with the lineage columns.
* The reconciler receives its archive reader as a parameter (``coordinator.service.
  reconcile`` passes the job's; ``test_reconcile_archive`` and ``test_reconcile_merge`` run
  through it); without one an archive slice is refused with a clear error, never skipped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lance
import pytest

from backfill.sinks.iceberg.live import MAINTENANCE_PROPERTIES
from coordinator.core import lineage
from coordinator.core.errors import ReconcileError
from coordinator.core.values import Cut, Epoch, Scope, Slice, TimeBucket
from coordinator.service import open_catalog, open_live_sink, open_reader
from reconcile.run import reconcile_job
from tests.contract.backfill_writers import make_job

pytestmark = pytest.mark.integration


def test_open_live_sink_sets_the_iceberg_maintenance_properties(tmp_path: Path) -> None:
    job = make_job("iceberg-overwrite", tmp_path, "127.0.0.1:1", "orders")
    catalog = open_catalog(job)
    catalog.create_namespace("contract")
    schema = lineage.with_lineage(job.schema_.arrow_schema())
    catalog.create_table("contract.orders", schema=schema)  # created elsewhere, no properties
    before = catalog.load_table("contract.orders").metadata.properties
    assert not set(MAINTENANCE_PROPERTIES) & set(before)
    open_live_sink(job)
    after = catalog.load_table("contract.orders").metadata.properties
    assert {k: after.get(k) for k in MAINTENANCE_PROPERTIES} == MAINTENANCE_PROPERTIES


def test_open_live_sink_creates_a_missing_lance_dataset(tmp_path: Path) -> None:
    job = make_job("lance-overwrite", tmp_path, "127.0.0.1:1", "orders")
    table = open_live_sink(job)
    data = lance.dataset(str(tmp_path / "orders.lance")).to_table()
    assert data.num_rows == 0
    assert set(lineage.COLUMNS) <= set(data.schema.names)
    assert table.live_offsets() == {}


def test_an_archive_slice_without_an_archive_reader_is_refused(tmp_path: Path) -> None:
    job = make_job("lance-overwrite", tmp_path, "127.0.0.1:1", "orders")
    open_live_sink(job)
    cut = Cut(job.job_id, "orders", (), datetime.now(UTC), Epoch(1))
    day = TimeBucket(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC))
    slice_ = Slice("a0", Scope("archive", bucket=day))
    with pytest.raises(ReconcileError, match="slice_id=a0: expected an archive reader"):
        reconcile_job(job, cut, [slice_], quarantine={}, sink=open_reader(job), source=_NoKafka())


class _NoKafka:
    def ends(self, partitions: Any) -> dict[int, int]:
        return {}

    def read(self, ranges: Any) -> Any:
        raise AssertionError("no Kafka unit expected")
