"""Pure parts of the writers: scope predicates, key checks, anti-join, offsets, retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill.sinks import common
from backfill.sinks.scopes import (
    arrow_scope,
    lance_int,
    lance_scope,
    lance_side,
    lance_str,
    lance_time,
    micros,
)
from coordinator.core import lineage
from coordinator.core.errors import CommitConflictError, DuplicateKeyError
from coordinator.core.values import (
    CommitToken,
    Epoch,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
    TimeBucket,
)

ranges = st.builds(
    lambda p, a, w: OffsetRange(PartitionId(p), Offset(a), Offset(a + w)),
    st.integers(0, 5),
    st.integers(0, 1000),
    st.integers(0, 50),
)


@given(st.lists(ranges, min_size=1, max_size=4), st.integers(0, 5), st.integers(0, 1100))
def test_arrow_scope_selects_exactly_the_owned_offsets(
    rngs: list[OffsetRange], p: int, o: int
) -> None:
    scope = Scope("kafka", ranges=tuple(rngs))
    row = pa.table(
        {
            lineage.PARTITION: pa.array([p], pa.int32()),
            lineage.OFFSET: pa.array([o], pa.int64()),
            lineage.SOURCE: ["kafka"],
            "ts": pa.array([0], pa.timestamp("ms", tz="UTC")),
        }
    )
    picked = row.filter(arrow_scope(scope, "ts")).num_rows == 1
    assert picked == any(r.partition == p and o in r for r in rngs)


def test_lance_scope_is_built_from_typed_parts() -> None:
    scope = Scope("kafka", ranges=(OffsetRange(PartitionId(1), Offset(5), Offset(9)),))
    assert lance_scope(scope, "ts") == (
        "(`_seamline_source` = 'kafka' AND "
        "((`_kafka_partition` = 1 AND `_kafka_offset` >= 5 AND `_kafka_offset` < 9)))"
    )
    day = datetime(2024, 1, 1, tzinfo=UTC)
    archive = Scope("archive", bucket=TimeBucket(day, day + timedelta(days=1)))
    assert f"arrow_cast({micros(day)}," in lance_scope(archive, "ts")
    # a name that is not an identifier stays ONE quoted column reference, never SQL
    assert "`ts; DROP` >= arrow_cast(" in lance_scope(archive, "ts; DROP")
    with pytest.raises(ValueError, match="without a backtick"):
        lance_scope(archive, "ts`; DROP")


KEYWORDS = ["current_timestamp", "current_date", "null", "date", "true", "false", "interval"]
KEYWORDS += ["exists", "all", "any", "MixedCase", 'say "hi"', "it's"]


@pytest.mark.parametrize("name", KEYWORDS)
def test_lance_bucket_quotes_every_event_time_name(name: str) -> None:
    day = datetime(2024, 2, 1, tzinfo=UTC)
    archive = Scope("archive", bucket=TimeBucket(day, day + timedelta(days=29)))
    ms = pa.timestamp("ms", tz="UTC")
    got = lance_scope(archive, name, ms)
    lo, hi = micros(day) // 1000, micros(day + timedelta(days=29)) // 1000
    cast = "'Timestamp(Millisecond, Some(\"UTC\"))'"
    assert got == (
        f"(`_seamline_source` = 'archive' AND `{name}` >= arrow_cast({lo}, {cast}) "
        f"AND `{name}` < arrow_cast({hi}, {cast}))"
    )


def test_lance_literals_are_typed_and_match_the_column_unit() -> None:
    t = datetime(2024, 2, 1, tzinfo=UTC) + timedelta(microseconds=1500)
    us = micros(t)
    assert lance_time(t, pa.timestamp("us", tz="UTC")) == (
        f"arrow_cast({us}, 'Timestamp(Microsecond, Some(\"UTC\"))')"
    )
    # a bound between two column values rounds up: col >= lit  <=>  col >= t
    assert lance_time(t, pa.timestamp("ms", tz="UTC")).startswith(f"arrow_cast({us // 1000 + 1},")
    assert (
        lance_time(t, pa.timestamp("s"))
        == f"arrow_cast({us // 10**6 + 1}, 'Timestamp(Second, None)')"
    )
    assert lance_time(t, pa.timestamp("ns", tz="UTC")).startswith(f"arrow_cast({us * 1000},")
    assert lance_time(t, pa.date32()) == f"arrow_cast({us // 86_400_000_000 + 1}, 'Date32')"
    with pytest.raises(ValueError, match="expected a timestamp or date32"):
        lance_time(t, pa.int64())
    with pytest.raises(ValueError, match="time zone"):
        lance_time(t, pa.timestamp("us", tz="UTC') OR true --"))
    assert lance_str("it's") == "'it''s'"
    assert lance_int(7) == "7"
    with pytest.raises(TypeError, match="expected an int"):
        lance_int(True)
    assert lance_side("backfill", qualifier="target") == "`target`.`_seamline_side` = 'backfill'"
    with pytest.raises(ValueError, match="expected a side"):
        lance_side("x' OR '1'='1")


def test_archive_scope_keeps_live_and_kafka_rows_out() -> None:
    day = datetime(2024, 1, 1, tzinfo=UTC)
    scope = Scope("archive", bucket=TimeBucket(day, day + timedelta(days=1)))
    ts = pa.array([micros(day)] * 2, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    rows = pa.table({lineage.SOURCE: ["archive", "kafka"], "ts": ts})
    assert rows.filter(arrow_scope(scope, "ts"))[lineage.SOURCE].to_pylist() == ["archive"]


def test_duplicate_keys_are_named() -> None:
    data = pa.table({"k": [1, 2, 2, 3, 3, 3]})
    with pytest.raises(DuplicateKeyError, match=r"2 duplicate keys.*\{'k': 2\}"):
        common.check_unique_keys(data, ["k"])
    common.check_unique_keys(pa.table({"k": [1, 2]}), ["k"])


@given(st.lists(st.integers(0, 30), unique=True), st.lists(st.integers(0, 30), max_size=100))
def test_anti_join_keeps_rows_whose_key_is_absent(left: list[int], right: list[int]) -> None:
    schema = pa.schema([pa.field("k", pa.int64(), nullable=False)])
    out = common.anti_join(pa.table({"k": left}, schema=schema), pa.table({"k": right}), ["k"])
    assert sorted(out["k"].to_pylist()) == sorted(set(left) - set(right))
    assert out.schema == schema


def test_live_offsets_round_trip_and_never_move_back() -> None:
    tok = CommitToken(
        "j",
        "live-1",
        1,
        Epoch(1),
        "live",
        (OffsetRange(PartitionId(0), Offset(10), Offset(20)),),
    )
    props = common.live_offset_properties(tok)
    assert props == {"seamline.live.offset.0": "20"}
    parsed = common.parse_live_offsets(props)
    assert common.merge_offsets({PartitionId(0): Offset(30)}, parsed) == {0: 30}


def test_retry_gives_up_with_a_conflict_error() -> None:
    calls = []

    def action() -> None:
        calls.append(1)
        raise RuntimeError("conflict")

    policy = common.RetryPolicy(attempts=3, base_s=0.0, max_s=0.0)
    with pytest.raises(CommitConflictError, match="3 conflicts in a row"):
        common.retry_conflicts("w", action, lambda e: isinstance(e, RuntimeError), policy)
    assert len(calls) == 3
