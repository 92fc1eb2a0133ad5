"""Pins the pyiceberg internals that ``backfill/sinks/iceberg/internals.py`` relies on.

If pyiceberg renames or reshapes any of them, these fail loudly here (not as a mysterious
write error in a run). Also proves the data files written once can be committed through the
public API and read back, on a real SQL-catalog table.
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
from pathlib import Path

import pyarrow as pa
import pyiceberg
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io import pyarrow as pyiceberg_pyarrow
from pyiceberg.table import Table, Transaction, WriteTask

from backfill.sinks.iceberg.internals import CachedTransaction, write_data_files


def _params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_pinned_pyiceberg_version_is_the_one_the_internals_were_checked_on() -> None:
    assert pyiceberg.__version__.startswith("0.12."), (
        f"expected pyiceberg 0.12.x, found {pyiceberg.__version__}: re-check "
        "backfill/sinks/iceberg/internals.py against the new release"
    )


def test_private_write_functions_keep_their_shape() -> None:
    assert _params(pyiceberg_pyarrow._dataframe_to_data_files)[:3] == [
        "table_metadata",
        "df",
        "io",
    ]
    assert _params(pyiceberg_pyarrow.write_file) == ["io", "table_metadata", "tasks"]
    assert _params(pyiceberg_pyarrow.bin_pack_arrow_table) == ["tbl", "target_file_size"]
    fields = {f.name for f in dataclasses.fields(WriteTask)}
    assert {"write_uuid", "task_id", "record_batches", "partition_key", "schema"} <= fields


def test_transaction_keeps_the_attributes_the_cache_reads(tmp_path: Path) -> None:
    table = _table(tmp_path)
    tx = Transaction(table, autocommit=False)
    assert tx._table is table
    assert isinstance(tx._updates, tuple)
    assert isinstance(inspect.getattr_static(Transaction, "table_metadata"), property)
    cached = CachedTransaction(table)
    assert cached.table_metadata is cached.table_metadata  # cached per staged state
    cached.set_properties({"k": "v"})
    assert cached.table_metadata.properties["k"] == "v"  # recomputed after a staged update


def test_files_written_once_commit_through_the_public_api(tmp_path: Path) -> None:
    table = _table(tmp_path)
    rows = pa.table({"id": pa.array(range(100), pa.int64())})
    files = write_data_files(table, rows)
    assert files and sum(f.record_count for f in files) == 100
    with table.transaction() as txn, txn.update_snapshot().fast_append() as append:
        for f in files:
            append.append_data_file(f)
    assert sorted(table.scan().to_arrow()["id"].to_pylist()) == list(range(100))


def test_only_the_internals_module_imports_private_pyiceberg_names() -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [
            "grep",
            "-rnE",
            r"_stage\(|_dataframe_to_data_files|\(Transaction\)",
            "backfill",
            "stream",
            "coordinator",
            "reconcile",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    offenders = [line for line in out if not line.startswith("backfill/sinks/iceberg/internals.py")]
    assert offenders == [], f"expected pyiceberg internals only in internals.py, found {offenders}"


def _table(tmp_path: Path) -> Table:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/wh")
    catalog.create_namespace("ns")
    schema = pa.schema([pa.field("id", pa.int64())])
    return catalog.create_table("ns.t", schema=schema)


def test_staged_data_files_survive_a_json_round_trip_and_commit(tmp_path: Path) -> None:
    """Write-audit-publish keeps staged files as JSON in the state store: the rebuilt files
    carry the same stats (pruning works) and commit through the public API."""
    import json

    from backfill.sinks.iceberg.internals import data_file_from_json, data_file_to_json

    table = _table(tmp_path)
    files = write_data_files(table, pa.table({"id": pa.array(range(50), pa.int64())}))
    docs = json.loads(json.dumps([data_file_to_json(f) for f in files]))
    rebuilt = [data_file_from_json(d, table.metadata) for d in docs]
    for a, b in zip(files, rebuilt, strict=True):
        assert (b.file_path, b.record_count, b.file_size_in_bytes) == (
            a.file_path, a.record_count, a.file_size_in_bytes,
        )  # fmt: skip
        assert b.lower_bounds == a.lower_bounds and b.upper_bounds == a.upper_bounds
        assert b.null_value_counts == a.null_value_counts
    with table.transaction() as txn, txn.update_snapshot().fast_append() as append:
        for f in rebuilt:
            append.append_data_file(f)
    assert sorted(table.scan().to_arrow()["id"].to_pylist()) == list(range(50))
    assert table.scan(row_filter="id >= 60").plan_files() == []  # bounds kept: pruned
