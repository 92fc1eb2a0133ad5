"""Business keys: uniqueness with named duplicates, and merge-mode supersession (pure Arrow)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from coordinator.core import lineage
from reconcile.keys import check_unique, superseded, superseded_rows


def _index(rows: list[tuple[int, str, int | None, int | None, str]]) -> pa.Table:
    """(order_id, source, partition, offset, side) rows of a key index."""
    cols: dict[str, Any] = {
        "order_id": pa.array([r[0] for r in rows], pa.int64()),
        lineage.SOURCE: pa.array([r[1] for r in rows], pa.string()),
        lineage.PARTITION: pa.array([r[2] for r in rows], pa.int32()),
        lineage.OFFSET: pa.array([r[3] for r in rows], pa.int64()),
        lineage.SIDE: pa.array([r[4] for r in rows], pa.string()),
    }
    return pa.table(cols)


INDEX = _index(
    [
        (1, "archive", None, None, "backfill"),
        (2, "archive", None, None, "backfill"),
        (2, "archive", None, None, "backfill"),
        (3, "kafka", 0, 5, "backfill"),
        (3, "kafka", 0, 9, "backfill"),
        (4, "kafka", 1, 30, "live"),
        (5, "kafka", 0, 2, "backfill"),
    ]
)


def test_archive_domain_names_duplicate_keys_and_ignores_the_event_log() -> None:
    check = check_unique(INDEX, ["order_id"], merge=False)
    assert (check.domain, check.rows, check.duplicated, check.ok) == ("archive", 3, 1, False)
    (dup,) = check.samples
    assert (dup.key, dup.rows, len(dup.where)) == ({"order_id": 2}, 2, 2)
    assert check.to_json()["samples"][0]["key"] == {"order_id": 2}


def test_merge_domain_is_the_whole_table() -> None:
    check = check_unique(INDEX, ["order_id"], merge=True)
    assert (check.domain, check.rows, check.duplicated) == ("table", 7, 2)
    assert sorted(d.key["order_id"] for d in check.samples) == [2, 3]
    assert check_unique(INDEX.slice(0, 0), ["order_id"], merge=True).ok


def test_superseded_only_by_a_later_record() -> None:
    missing = _index(
        [
            (4, "kafka", 0, 7, "backfill"),  # key held by a live row: superseded
            (3, "kafka", 0, 6, "backfill"),  # held at offset 9 of partition 0 (and 5): superseded
            (5, "kafka", 0, 8, "backfill"),  # held only at offset 2 (earlier): lost
            (5, "kafka", 1, 1, "backfill"),  # held in another partition by a backfill row: lost
            (9, "kafka", 0, 3, "backfill"),  # key nowhere: lost
        ]
    )
    got = superseded_rows(missing, INDEX, ["order_id"]).sort_by(lineage.OFFSET)
    assert got.to_pydict() == {lineage.PARTITION: [0, 0], lineage.OFFSET: [6, 7]}
    assert superseded_rows(missing.slice(0, 0), INDEX, ["order_id"]).num_rows == 0


def test_superseded_follows_the_declared_order_archive_below_kafka_and_version_first() -> None:
    """Archive rows are superseded by any Kafka row of the key; with a ``version`` column the
    greater version decides even against source order (an archive row can beat a record)."""
    index = _index([(1, "kafka", 2, 0, "live"), (6, "archive", None, None, "backfill")])
    index = index.append_column("v", pa.array([10, 50], pa.int64()))
    missing = _index([(1, "archive", None, None, "backfill"), (6, "kafka", 0, 4, "backfill")])
    by_source = superseded(missing, index.drop_columns(["v"]), ["order_id"])
    assert by_source["order_id"].to_pylist() == [1]  # kafka beats archive; not the reverse
    with_version = missing.append_column("v", pa.array([20, 40], pa.int64()))
    got = superseded(with_version, index, ["order_id"], "v")
    assert got["order_id"].to_pylist() == [6]  # version 50 (archive) beats 40; 10 < 20 loses
