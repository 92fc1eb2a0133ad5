"""The local S3 server (``seamline s3``) and an Iceberg warehouse on it.

The table's files are objects in the server's buckets (read back from its filesystem
backend, not through seamline), the CLI never prints the secret key, and a bad key is refused.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from pyarrow import fs

from backfill.sinks import open_sink
from backfill.sinks.s3_server.local import S3Server, s3_status
from coordinator.cli.main import cli
from coordinator.core.values import Scope
from tests.contract.backfill_writers import Rows, make_job, token

pytestmark = pytest.mark.integration


def test_an_iceberg_warehouse_on_s3_holds_the_table_files(
    s3_server: S3Server, tmp_path: Path
) -> None:
    job = make_job("iceberg-overwrite@s3", tmp_path, "127.0.0.1:1", "t", s3=s3_server)
    sink = open_sink(job)
    sink.ensure_table()
    rows = Rows(base=0, partition=0, start=0, count=40)
    sink.write_slice(Scope("kafka", ranges=(rows.range,)), rows.table("backfill"),
                     token("k0", rows.range))
    warehouse = str(job.table.catalog_warehouse())
    assert warehouse.startswith("s3://contract-")
    bucket = warehouse.removeprefix("s3://").split("/")[0]
    s3 = fs.S3FileSystem(access_key=s3_server.access_key_id,
                         secret_key=s3_server.secret_access_key,
                         endpoint_override=s3_server.endpoint, scheme="http",
                         region=s3_server.region, force_virtual_addressing=False)
    keys = [i.path for i in s3.get_file_info(fs.FileSelector(bucket, recursive=True))]
    assert any(k.endswith(".parquet") and "/data/" in k for k in keys), keys
    assert any(k.endswith(".metadata.json") for k in keys), keys
    assert sorted(sink.scan().column("order_id").to_pylist()) == list(range(40))
    wrong = fs.S3FileSystem(access_key=s3_server.access_key_id, secret_key="wrong",
                            endpoint_override=s3_server.endpoint, scheme="http",
                            region=s3_server.region, force_virtual_addressing=False)
    with pytest.raises(OSError):
        wrong.get_file_info(fs.FileSelector(bucket, recursive=True))


def test_cli_start_status_stop_never_prints_the_secret(tmp_path: Path) -> None:
    data_dir = tmp_path / "s3"
    runner = CliRunner()
    bucket = f"b-{uuid.uuid4().hex[:8]}"
    try:
        started = runner.invoke(cli, ["s3", "start", "--data-dir", str(data_dir),
                                      "--bucket", bucket])
        assert started.exit_code == 0, started.output
        assert f"bucket=s3://{bucket}" in started.output
        secret = json.loads((data_dir / "s3.json").read_text())["secret_access_key"]
        assert (data_dir / "s3.json").stat().st_mode & 0o077 == 0
        shown = runner.invoke(cli, ["s3", "status", "--data-dir", str(data_dir)])
        assert shown.exit_code == 0 and "endpoint=http://127.0.0.1:" in shown.output
        assert secret not in started.output + shown.output
        assert (data_dir / "blobs" / bucket).is_dir()
        stopped = runner.invoke(cli, ["s3", "stop", "--data-dir", str(data_dir)])
        assert stopped.exit_code == 0 and stopped.output.startswith("stopped pid=")
        down = runner.invoke(cli, ["s3", "status", "--data-dir", str(data_dir)])
        assert down.exit_code == 1 and "no S3 server running" in down.output
    finally:
        runner.invoke(cli, ["s3", "stop", "--data-dir", str(data_dir)])
    assert s3_status(data_dir)[0] == "stopped"
