"""The local Iceberg REST catalog (``seamline catalog``) and seamline tables on it.

Real server, real pyiceberg REST client: a slice written through a job with
``catalog = { type = "rest", ... }`` and ``[table.storage]`` is read back through an
independent REST client, and its data and metadata files are objects in the S3 server's bucket
(the session catalog's warehouse); the CLI starts, reports and stops a catalog on local files;
it binds loopback only; a restart keeps the tables.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pyarrow import fs
from pyiceberg.catalog import load_catalog

from backfill.sinks import open_sink
from backfill.sinks.iceberg.rest_server.local import RestCatalogServer, catalog_status
from backfill.sinks.s3_server.local import S3Server
from coordinator.cli.main import cli
from coordinator.core import lineage
from coordinator.core.jobspec import JobSpec, parse_job
from coordinator.core.values import Scope
from tests.contract.backfill_writers import Rows, token

pytestmark = pytest.mark.integration


def _rest_job(root: Path, uri: str, identifier: str, s3: S3Server) -> JobSpec:
    doc: dict[str, Any] = {
        "stream": {"bootstrap": "127.0.0.1:1", "topic": "orders"},
        "schema": {
            "fields": {"order_id": "int64", "amount": "float64", "ts": "timestamp_ms"},
            "required": ["order_id"], "event_time": "ts",
        },
        "table": {"format": "iceberg", "identifier": identifier,
                  "catalog": {"type": "rest", "uri": uri}, "storage": s3.storage()},
    }
    return parse_job(doc, base_dir=root, default_id="contract")


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on ``port`` from /proc/net/tcp{,6}."""
    found = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(addr)
    return found


def test_a_slice_written_through_the_rest_catalog_is_read_back_by_another_client(
    iceberg_rest_catalog: RestCatalogServer, s3_server: S3Server, tmp_path: Path
) -> None:
    identifier = f"ns_{uuid.uuid4().hex[:8]}.orders"
    sink = open_sink(_rest_job(tmp_path, iceberg_rest_catalog.uri, identifier, s3_server))
    sink.ensure_table()
    rows = Rows(base=0, partition=0, start=0, count=30)
    sink.write_slice(Scope("kafka", ranges=(rows.range,)), rows.table("backfill"),
                     token("k0", rows.range))
    other = load_catalog("other", type="rest", uri=iceberg_rest_catalog.uri, **{
        "s3.endpoint": s3_server.endpoint, "s3.access-key-id": s3_server.access_key_id,
        "s3.secret-access-key": s3_server.secret_access_key, "s3.region": s3_server.region,
    })  # fmt: skip
    table = other.load_table(identifier)
    back = table.scan().to_arrow()
    assert sorted(back.column("order_id").to_pylist()) == list(range(30))
    assert set(back.column(lineage.OFFSET).to_pylist()) == set(range(30))
    summary = table.current_snapshot().summary  # type: ignore[union-attr]
    assert summary is not None and "contract" in str(summary.additional_properties)
    warehouse = str(iceberg_rest_catalog.warehouse)
    assert warehouse.startswith("s3://") and table.location().startswith(warehouse)
    bucket, _, prefix = table.location().removeprefix("s3://").partition("/")
    s3 = fs.S3FileSystem(access_key=s3_server.access_key_id,
                         secret_key=s3_server.secret_access_key,
                         endpoint_override=s3_server.endpoint, scheme="http",
                         region=s3_server.region, force_virtual_addressing=False)
    keys = [i.path for i in s3.get_file_info(fs.FileSelector(f"{bucket}/{prefix}",
                                                             recursive=True))]
    assert any(k.endswith(".parquet") and "/data/" in k for k in keys), keys
    assert any(k.endswith(".metadata.json") for k in keys), keys  # written by the server


def test_the_server_listens_on_loopback_only(iceberg_rest_catalog: RestCatalogServer) -> None:
    addresses = _listening_addresses(iceberg_rest_catalog.port)
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1 (v4, v4-mapped v6)
    assert addresses and addresses <= loopback, addresses


def test_cli_start_status_stop_and_a_restart_keeps_the_tables(tmp_path: Path) -> None:
    data_dir = tmp_path / "cat"
    runner = CliRunner()
    try:
        started = runner.invoke(cli, ["catalog", "start", "--data-dir", str(data_dir)])
        assert started.exit_code == 0, started.output
        uri = started.output.splitlines()[0].removeprefix("uri=")
        assert runner.invoke(cli, ["catalog", "status", "--data-dir", str(data_dir)]).output \
            == f"uri={uri}\n"
        load_catalog("c", type="rest", uri=uri).create_namespace("kept")
        stopped = runner.invoke(cli, ["catalog", "stop", "--data-dir", str(data_dir)])
        assert stopped.exit_code == 0 and stopped.output.startswith("stopped pid=")
        down = runner.invoke(cli, ["catalog", "status", "--data-dir", str(data_dir)])
        assert down.exit_code == 1 and "no catalog running" in down.output
        again = runner.invoke(cli, ["catalog", "start", "--data-dir", str(data_dir)])
        assert again.exit_code == 0, again.output
        uri2 = again.output.splitlines()[0].removeprefix("uri=")
        assert ("kept",) in load_catalog("c", type="rest", uri=uri2).list_namespaces()
    finally:
        runner.invoke(cli, ["catalog", "stop", "--data-dir", str(data_dir)])
    assert catalog_status(data_dir).state == "stopped"


def test_a_catalog_killed_by_sigkill_restarts_on_its_data_dir_with_every_commit(
    tmp_path: Path,
) -> None:
    # The fault soak's --catalog-kills drill: the server (and the SQLite store it holds open)
    # dies without a shutdown hook; the restart serves the same port and every commit made
    # before the kill, and takes new ones.
    import pyarrow as pa

    from backfill.sinks.iceberg.rest_server.local import kill_catalog, start_catalog, stop_catalog

    data_dir = tmp_path / "catalog"
    rows = pa.table({"id": pa.array(range(10), pa.int64())})
    try:
        first = start_catalog(data_dir)
        catalog = load_catalog("c", type="rest", uri=first.uri)
        catalog.create_namespace("drill")
        catalog.create_table(("drill", "t"), rows.schema).append(rows)
        assert kill_catalog(data_dir) == first.pid
        assert catalog_status(data_dir).state == "stopped"
        assert kill_catalog(data_dir) is None  # nothing left to kill
        second = start_catalog(data_dir)
        assert (second.port, second.pid != first.pid) == (first.port, True)
        again = load_catalog("c", type="rest", uri=second.uri).load_table(("drill", "t"))
        assert sorted(again.scan().to_arrow()["id"].to_pylist()) == list(range(10))
        again.append(rows)
        assert len(again.scan().to_arrow()) == 20
    finally:
        stop_catalog(data_dir)
