"""Merge by key under the declared order (pure Arrow): winners, in-batch duplicates, strictness."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.sinks.merge import MergeRule, decide, dedupe, plan
from coordinator.core import lineage
from coordinator.core.errors import DuplicateKeyError, WriterError


def rows(items: list[tuple[int, str, str, int | None, int | None, int]]) -> pa.Table:
    """(key, value, source, partition, offset, version) rows."""
    cols: dict[str, Any] = {
        "k": pa.array([r[0] for r in items], pa.int64()),
        "v": pa.array([r[1] for r in items], pa.string()),
        lineage.SOURCE: pa.array([r[2] for r in items], pa.string()),
        lineage.PARTITION: pa.array([r[3] for r in items], pa.int32()),
        lineage.OFFSET: pa.array([r[4] for r in items], pa.int64()),
        "ver": pa.array([r[5] for r in items], pa.int64()),
    }
    return pa.table(cols)


def by_key(table: pa.Table) -> dict[int, str]:
    return dict(zip(table["k"].to_pylist(), table["v"].to_pylist(), strict=True))


def test_kafka_beats_archive_and_a_later_offset_beats_an_earlier_one() -> None:
    batch = rows([(1, "arch", "archive", None, None, 0), (2, "k2@5", "kafka", 0, 5, 0)])
    table = rows([(1, "k1@3", "kafka", 1, 3, 0), (2, "k2@9", "kafka", 0, 9, 0)])
    decided = plan(batch, table, MergeRule(("k",)))
    assert by_key(decided.rows) == {1: "k1@3", 2: "k2@9"}  # the table's newer rows stay
    assert sorted(decided.replace["k"].to_pylist()) == [1, 2]
    newer = rows([(1, "k1@4", "kafka", 1, 4, 0), (3, "new", "kafka", 0, 1, 0)])
    assert by_key(plan(newer, table.slice(0, 1), MergeRule(("k",))).rows) == {1: "k1@4", 3: "new"}


def test_the_version_column_decides_before_source_order() -> None:
    batch = rows(
        [(1, "kafka-old", "kafka", 0, 50, 10), (2, "archive-new", "archive", None, None, 30)]
    )
    table = rows([(1, "archive-newer", "archive", None, None, 20), (2, "kafka", "kafka", 0, 9, 20)])
    decided = plan(batch, table, MergeRule(("k",), version="ver"))
    assert by_key(decided.rows) == {1: "archive-newer", 2: "archive-new"}
    assert by_key(plan(batch, table, MergeRule(("k",))).rows) == {1: "kafka-old", 2: "kafka"}


def test_table_duplicates_of_a_key_are_healed_to_the_winner() -> None:
    table = rows([(1, "a", "archive", None, None, 0), (1, "b", "kafka", 0, 2, 0)])
    decided = plan(rows([(1, "c", "kafka", 0, 1, 0)]), table, MergeRule(("k",)))
    assert by_key(decided.rows) == {1: "b"} and decided.rows.num_rows == 1
    assert decided.replace["k"].to_pylist() == [1]  # every row of the key is replaced


def test_in_batch_duplicates_resolve_newest_wins_unless_strict() -> None:
    batch = rows(
        [
            (1, "second", "kafka", 0, 8, 0),
            (1, "first", "kafka", 0, 3, 0),
            (2, "x", "archive", None, None, 0),
        ]
    )
    assert by_key(dedupe(batch, MergeRule(("k",)))) == {1: "second", 2: "x"}
    assert dedupe(batch, MergeRule(("k",)))["v"].to_pylist() == ["second", "x"]  # input order
    with pytest.raises(DuplicateKeyError, match="1 duplicate keys"):
        dedupe(batch, MergeRule(("k",), strict=True))


def test_null_keys_and_a_version_inside_the_key_are_refused() -> None:
    batch = rows([(1, "a", "kafka", 0, 1, 0)]).set_column(0, "k", pa.array([None], pa.int64()))
    with pytest.raises(WriterError, match="found 1 null keys"):
        dedupe(batch, MergeRule(("k",)))
    with pytest.raises(ValueError, match="outside the key"):
        MergeRule(("k",), version="k")


def test_a_large_key_set_is_bounded_by_its_range_so_iceberg_can_prune_files() -> None:
    """pyiceberg stops pruning files by statistics for an IN of more than 200 values; the
    merge's key filter adds the key range so a merge still skips files outside it."""
    from pyiceberg.expressions import And, In

    from backfill.sinks.iceberg.merge import key_filter

    few = key_filter(("k",), pa.table({"k": pa.array([3, 1, 2], pa.int64())}))
    assert isinstance(few, In) and {lit.value for lit in few.literals} == {1, 2, 3}
    many = key_filter(("k",), pa.table({"k": pa.array(range(500, 1000), pa.int64())}))
    assert isinstance(many, And)
    text = repr(many)
    assert "GreaterThanOrEqual" in text and "LessThanOrEqual" in text and "In(" in text
    assert "500" in text and "999" in text


TOMB = MergeRule(("k",), delete_when=("v", "DEL"))


def deleted(table: pa.Table) -> dict[int, bool]:
    return dict(zip(table["k"].to_pylist(), table[lineage.DELETED].to_pylist(), strict=True))


def test_a_tombstone_is_a_version_its_marker_row_wins_and_an_older_version_cannot_revive() -> None:
    table = TOMB.mark(rows([(1, "k1@3", "kafka", 0, 3, 0), (2, "arch", "archive", None, None, 0)]))
    tomb = TOMB.mark(rows([(1, "DEL", "kafka", 0, 7, 0), (2, "DEL", "kafka", 0, 8, 0)]))
    after = plan(tomb, table, TOMB).rows
    assert deleted(after) == {1: True, 2: True} and by_key(after) == {1: "DEL", 2: "DEL"}
    # a history slice with older versions commits after the live tombstones: the keys stay deleted
    late = TOMB.mark(rows([(1, "k1@5", "kafka", 0, 5, 0), (2, "arch2", "archive", None, None, 0)]))
    assert deleted(plan(late, after, TOMB).rows) == {1: True, 2: True}
    # a newer version after the tombstone revives the key
    newer = TOMB.mark(rows([(1, "k1@9", "kafka", 0, 9, 0)]))
    assert deleted(plan(newer, after.slice(0, 1), TOMB).rows) == {1: False}


def test_tombstones_in_one_batch_and_under_a_version_column_follow_the_same_order() -> None:
    batch = TOMB.mark(rows([(1, "DEL", "kafka", 0, 4, 0), (1, "v@6", "kafka", 0, 6, 0)]))
    assert deleted(dedupe(batch, TOMB)) == {1: False}  # the later record wins
    rule = MergeRule(("k",), version="ver", delete_when=("v", "DEL"))
    batch = rule.mark(rows([(1, "DEL", "kafka", 0, 4, 30), (1, "v@6", "kafka", 0, 6, 20)]))
    assert deleted(dedupe(batch, rule)) == {1: True}  # the greater version is the tombstone


def test_the_marker_is_structural_null_is_no_tombstone_and_roles_cannot_overlap() -> None:
    batch = rows([(1, "DEL", "kafka", 0, 1, 0), (2, "x", "kafka", 0, 2, 0)])
    batch = batch.set_column(1, "v", pa.array(["DEL", None], pa.string()))
    assert deleted(TOMB.mark(batch)) == {1: True, 2: False}
    assert TOMB.mark(batch).schema.field(lineage.DELETED).nullable is False
    assert MergeRule(("k",)).mark(batch) is batch  # no marker declared: unchanged
    with pytest.raises(WriterError, match="delete marker"):
        TOMB.mark(batch.drop_columns(["v"]))
    with pytest.raises(ValueError, match="outside key and version"):
        MergeRule(("k",), version="ver", delete_when=("ver", 1))


def test_the_lance_key_predicate_spells_integer_and_string_keys_structurally() -> None:
    from backfill.sinks.lance.merge import key_predicate

    ints = pa.table({"k": pa.array([3, 1, 3, -2], pa.int64())})
    assert key_predicate(ints, ("k",)) == "`k` IN (3, 1, -2)"
    strs = pa.table({"s": pa.array(["a'b", "c"])})
    assert key_predicate(strs, ("s",)) == "`s` IN ('a''b', 'c')"
    assert key_predicate(ints.slice(0, 0), ("k",)) is None


def _canonical(table: pa.Table) -> list[tuple[Any, ...]]:
    return sorted(tuple(r.values()) for r in table.to_pylist())


def _brute_force(batch: pa.Table, table: pa.Table, rule: MergeRule) -> list[tuple[Any, ...]]:
    """Each key's winner by the declared order, spelled row by row: (version, source,
    partition, offset), null oldest, then the table's row on a full tie."""
    best: dict[tuple[Any, ...], tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
    for origin, part in ((0, batch), (1, table)):
        for r in part.to_pylist():
            rank = (*((r[c] is not None, r[c]) for c in rule.order), origin)
            key = tuple(r[k] for k in rule.key)
            if key not in best or rank >= best[key][0]:
                best[key] = (rank, tuple(r.values()))
    return sorted(row for _, row in best.values())


_ROW = st.tuples(
    st.integers(0, 5),
    st.sampled_from(["a", "b"]),
    st.sampled_from(["archive", "kafka"]),
    st.integers(0, 1),
    st.integers(0, 4),
    st.integers(0, 2),
).map(lambda r: (r[0], r[1], r[2], None if r[2] == "archive" else r[3],
                 None if r[2] == "archive" else r[4], r[5]))  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(_ROW, max_size=8), st.lists(_ROW, max_size=8), st.booleans(), st.booleans())
def test_decide_keeps_table_winners_in_place_and_agrees_with_plan(
    batch_items: list[Any], table_items: list[Any], versioned: bool, two_keys: bool
) -> None:
    keys = ("k", "v") if two_keys else ("k",)
    rule = MergeRule(keys, version="ver" if versioned else None)
    batch, everything = dedupe(rows(batch_items), rule), rows(table_items)
    held = batch.select(list(keys)).group_by(list(keys)).aggregate([])
    table = everything.join(held, list(keys), join_type="left semi")  # rows of its keys
    decided = decide(batch, table, rule)
    lost = set(decided.losers.tolist())
    keep = pa.array([i not in lost for i in range(table.num_rows)], pa.bool_())
    after = pa.concat_tables([table.filter(keep), decided.rows])
    assert _canonical(after) == _brute_force(batch, table, rule)
    assert _canonical(plan(batch, table, rule).rows) == _brute_force(batch, table, rule)
    assert decided.rows.equals(batch.take(pa.array(decided.won, pa.int64())))
    assert decided.rows.num_rows + table.num_rows - len(lost) == held.num_rows  # one per key
    assert decided.rows.equals(batch.take(pa.array(decided.won, pa.int64())))
