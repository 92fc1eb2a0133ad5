"""Custom-key archive slices (``[history.archive] slice_by``): the plan (tenant x month), safe
slice ids, the plan hash, the job-file checks, file discovery and the structural scopes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backfill.sinks.scopes import arrow_scope, iceberg_scope, lance_scope
from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import parse_job
from coordinator.core.values import (
    Cut,
    Epoch,
    Offset,
    PartitionId,
    Scope,
    SliceKey,
    TimeBucket,
)
from coordinator.plan.facts import file_keys
from coordinator.plan.planner import ArchiveFile, key_slice_id, make_plan
from coordinator.state.codec import scope_from_json, scope_to_json
from reconcile.tablepass import scopes_disjoint

CUT = Cut("keys", "orders", (), datetime(2024, 6, 1, tzinfo=UTC), Epoch(1))
JAN = datetime(2024, 1, 3, tzinfo=UTC)
FEB = datetime(2024, 2, 20, tzinfo=UTC)
BUCKET = TimeBucket(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))


def _file(path: str, keys: set[str] | None, lo: datetime = JAN, hi: datetime = FEB) -> ArchiveFile:
    return ArchiveFile(path, lo, hi, 100, 1000, None if keys is None else frozenset(keys))


def test_tenant_by_month_slices_name_their_key_and_skip_files_without_it() -> None:
    files = [_file("a.parquet", {"acme", "globex"}), _file("b.parquet", {"globex"})]
    plan = make_plan(CUT, 10, files, "month", key_column="tenant", key_values=None)
    ids = [s.slice_id for s in plan.slices]
    assert ids == [
        "a-month-202401-tenant=acme", "a-month-202401-tenant=globex",
        "a-month-202402-tenant=acme", "a-month-202402-tenant=globex",
    ]  # fmt: skip
    acme = plan.slices[0]
    assert acme.files == ("a.parquet",), "b.parquet holds no acme row"
    assert acme.scope == Scope("archive", bucket=BUCKET, key=SliceKey("tenant", ("acme",)))
    assert plan.slices[1].files == ("a.parquet", "b.parquet")


def test_declared_values_and_groups_make_one_slice_each() -> None:
    files = [_file("a.parquet", {"acme", "globex", "initech"})]
    plan = make_plan(
        CUT, 10, files, "month", key_column="tenant",
        key_values=[("acme",), ("initech", "globex")],
    )  # fmt: skip
    assert [s.slice_id for s in plan.slices][:2] == [
        "a-month-202401-tenant=acme", "a-month-202401-tenant=globex+initech",
    ]  # fmt: skip


def test_slice_ids_quote_user_values() -> None:
    key = SliceKey("ten ant", ("o'brien", "a*b", "x/y", "p+q"))
    sid = key_slice_id(key)
    assert sid == "ten%20ant=a%2Ab+o%27brien+p%2Bq+x%2Fy"
    assert not set(sid) & set("*?[]/'\" ")


def test_the_plan_hash_includes_the_key() -> None:
    files = [_file("a.parquet", {"acme", "globex"})]
    plain = make_plan(CUT, 10, files, "month")
    keyed = make_plan(CUT, 10, files, "month", key_column="tenant", key_values=[("acme",)])
    other = make_plan(CUT, 10, files, "month", key_column="tenant", key_values=[("globex",)])
    column = make_plan(CUT, 10, files, "month", key_column="region", key_values=[("acme",)])
    assert len({plain.plan_hash, keyed.plan_hash, other.plan_hash, column.plan_hash}) == 4


def test_a_keyed_scope_round_trips_through_the_state_codec() -> None:
    scope = Scope("archive", bucket=BUCKET, key=SliceKey("shard", (3, 1)))
    doc = scope_to_json(scope)
    assert doc["key"] == {"column": "shard", "values": [1, 3]}
    assert scope_from_json(doc) == scope
    assert "key" not in scope_to_json(Scope("archive", bucket=BUCKET))  # old hashes unchanged


def test_slice_keys_refuse_mixed_or_bool_values() -> None:
    with pytest.raises(ValueError, match="one type"):
        SliceKey("t", ("a", 1))
    with pytest.raises(ValueError, match="one type"):
        SliceKey("t", (True,))


def test_scopes_are_structural_and_typed() -> None:
    scope = Scope("archive", bucket=BUCKET, key=SliceKey("null", ("o'brien", "acme")))
    text = lance_scope(scope, "current_timestamp")
    assert "`null` IN ('acme', 'o''brien')" in text
    assert "`current_timestamp` >=" in text
    ice = repr(iceberg_scope(scope, "ts"))
    assert "In(Reference(name='null')" in ice and "o'brien" in ice
    ints = lance_scope(Scope("archive", bucket=BUCKET, key=SliceKey("shard", (7,))), "ts")
    assert "`shard` IN (7)" in ints
    table = pa.table(
        {
            "_seamline_source": ["archive"] * 3,
            "ts": pa.array([JAN] * 3, pa.timestamp("us", tz="UTC")),
            "null": ["acme", "o'brien", "globex"],
        }
    )
    assert table.filter(arrow_scope(scope, "ts"))["null"].to_pylist() == ["acme", "o'brien"]


def test_keyed_scopes_of_one_bucket_are_disjoint_only_by_value() -> None:
    a = Scope("archive", bucket=BUCKET, key=SliceKey("t", ("acme",)))
    b = Scope("archive", bucket=BUCKET, key=SliceKey("t", ("globex",)))
    both = Scope("archive", bucket=BUCKET, key=SliceKey("t", ("acme", "initech")))
    assert scopes_disjoint([a, b])
    assert not scopes_disjoint([a, both])
    assert not scopes_disjoint([a, Scope("archive", bucket=BUCKET)])


def _job(slice_by: str, fields: str = 'tenant = "string"\nshard = "int32"') -> dict[str, object]:
    import tomllib

    text = f"""
[stream]
bootstrap = "127.0.0.1:9092"
topic = "t"
[schema]
event_time = "ts"
[schema.fields]
ts = "timestamp_ms"
{fields}
[table]
format = "lance"
uri = "t.lance"
[[history.archive]]
glob = "a/*.parquet"
bucket = "month"
slice_by = {slice_by}
"""
    return tomllib.loads(text)


@pytest.mark.parametrize(
    ("slice_by", "message"),
    [
        ('{column = "nope"}', "expected a column of \\[schema.fields\\]"),
        ('{column = "ts"}', "other than the event time"),
        ('{column = "shard", values = ["a"]}', "expected int values"),
        ('{column = "tenant", values = [1]}', "expected str values"),
        ('{column = "tenant", values = ["a", ["a", "b"]]}', "in one slice only"),
        ('{column = "tenant", values = []}', "at least one value"),
    ],
)
def test_bad_slice_by_is_a_config_error(tmp_path: Path, slice_by: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_job(_job(slice_by), base_dir=tmp_path, default_id="j")


def test_a_float_key_column_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="string or integer column"):
        parse_job(
            _job('{column = "x"}', 'x = "float64"'), base_dir=tmp_path, default_id="j"
        )


def test_file_keys_from_statistics_or_a_scan(tmp_path: Path) -> None:
    one = tmp_path / "one.parquet"
    pq.write_table(pa.table({"tenant": ["acme"] * 3}), one)
    assert file_keys(one, "parquet", "tenant", str) == {"acme"}
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("tenant,ts\n007,1\nacme,2\n007,3\n")
    assert file_keys(mixed, "csv", "tenant", str) == {"007", "acme"}  # strings stay strings
    holes = tmp_path / "holes.parquet"
    pq.write_table(pa.table({"tenant": ["acme", None]}), holes)
    with pytest.raises(ConfigError, match="null values"):
        file_keys(holes, "parquet", "tenant", str)
    assert file_keys(holes, "parquet", "tenant", str, nulls_ok=True) == {"acme"}


class _Reader:
    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def scan(self, scope: Scope | None = None, columns: list[str] | None = None) -> pa.Table:
        return self.table

    def live_offsets(self) -> dict[PartitionId, Offset]:
        return {}


def test_the_one_pass_groups_archive_rows_by_bucket_and_key_as_a_scan_per_scope_does() -> None:
    from reconcile.checksum import checksum
    from reconcile.tablepass import PassPlan, bucket_range, table_pass

    feb = TimeBucket(BUCKET.end, datetime(2024, 3, 1, tzinfo=UTC))
    scopes = [
        Scope("archive", bucket=BUCKET, key=SliceKey("tenant", ("acme",))),
        Scope("archive", bucket=BUCKET, key=SliceKey("tenant", ("globex", "initech"))),
        Scope("archive", bucket=feb, key=SliceKey("tenant", ("acme",))),
    ]
    n = 40
    table = pa.table(
        {
            "_seamline_source": ["archive" if i % 5 else "kafka" for i in range(n)],
            "_seamline_side": ["backfill" if i % 5 else "live" for i in range(n)],
            "_kafka_partition": pa.array([None if i % 5 else 0 for i in range(n)], pa.int32()),
            "_kafka_offset": pa.array([None if i % 5 else i for i in range(n)], pa.int64()),
            "ts": pa.array([JAN if i % 2 else FEB for i in range(n)], pa.timestamp("us", tz="UTC")),
            "tenant": [["acme", "globex", "initech", "hooli", None][i % 5 - 1] for i in range(n)],
            "amount": [float(i) for i in range(n)],
        }
    )
    plan = PassPlan(
        {}, [bucket_range(s.bucket, i) for i, s in enumerate(scopes) if s.bucket], {}, "ts",
        bucket_keys={i: s.key.values for i, s in enumerate(scopes) if s.key},
        key_column="tenant",
    )  # fmt: skip
    tp = table_pass(_Reader(table), plan)
    for i, scope in enumerate(scopes):
        want = checksum(table.filter(arrow_scope(scope, "ts")))
        assert want.rows > 0 and tp.checksums[i] == want, scope


def test_reprocess_slices_keep_the_custom_key() -> None:
    from coordinator.run.reprocess import archive_reprocess_slices

    files = [_file("a.parquet", {"acme", "globex"}), _file("b.parquet", {"globex"})]
    keys = [SliceKey("tenant", ("acme",)), SliceKey("tenant", ("globex",))]
    out = archive_reprocess_slices(
        "x", files, datetime(2024, 1, 10, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC), "month", keys
    )
    assert [(s.slice_id, s.files) for s in out] == [
        ("r-x-a-20240110T00-20240201T00-tenant=acme", ("a.parquet",)),
        ("r-x-a-20240110T00-20240201T00-tenant=globex", ("a.parquet", "b.parquet")),
    ]
    assert out[0].scope.key == keys[0]
