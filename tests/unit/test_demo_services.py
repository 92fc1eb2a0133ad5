"""``seamline demo --catalog/--storage``: the job file it writes, and the combination it
refuses (Lance has no catalog)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import load_job
from coordinator.demo.job import S3_SECRET_ENV, DemoServices, prepare_workdir, render_job
from coordinator.demo.run import DemoOptions


def test_s3_job_file_maps_onto_storage_and_never_holds_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = prepare_workdir(tmp_path / "demo")
    services = DemoServices(s3_endpoint="http://127.0.0.1:9", s3_access_key_id="seamline-ab",
                            s3_bucket="demo-1")
    text = render_job("iceberg", paths, "127.0.0.1:1", "orders", services)
    paths.job.write_text(text)
    monkeypatch.setenv(S3_SECRET_ENV, "s3cr3t-value")
    job = load_job(paths.job)
    assert "s3cr3t-value" not in text
    assert job.table.catalog_warehouse() == "s3://demo-1/warehouse"
    props = job.table.storage.iceberg_properties()
    assert props["s3.endpoint"] == "http://127.0.0.1:9"
    assert props["s3.secret-access-key"] == "s3cr3t-value"
    assert props["s3.path-style-access"] == "true"


def test_rest_job_file_names_the_rest_catalog(tmp_path: Path) -> None:
    paths = prepare_workdir(tmp_path / "demo")
    paths.job.write_text(render_job("iceberg", paths, "127.0.0.1:1", "orders",
                                    DemoServices(rest_uri="http://127.0.0.1:8181")))
    spec = load_job(paths.job).table.catalog_spec()
    assert spec is not None and spec.type == "rest"
    assert spec.uri is not None and spec.uri.get_secret_value() == "http://127.0.0.1:8181"


def test_default_job_file_is_still_the_embedded_sql_catalog(tmp_path: Path) -> None:
    paths = prepare_workdir(tmp_path / "demo")
    paths.job.write_text(render_job("iceberg", paths, "127.0.0.1:1", "orders"))
    job = load_job(paths.job)
    spec = job.table.catalog_spec()
    assert spec is not None and spec.type == "sql"
    assert job.table.catalog_warehouse() == paths.warehouse.as_uri()
    assert job.table.storage.iceberg_properties() == {}


def test_lance_on_s3_job_file_puts_the_dataset_in_the_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = prepare_workdir(tmp_path / "demo")
    services = DemoServices(s3_endpoint="http://127.0.0.1:9", s3_access_key_id="seamline-ab",
                            s3_bucket="demo-1")
    paths.job.write_text(render_job("lance", paths, "127.0.0.1:1", "orders", services))
    monkeypatch.setenv(S3_SECRET_ENV, "s3cr3t-value")
    job = load_job(paths.job)
    assert job.table.uri == "s3://demo-1/orders.lance"
    opts = job.table.storage.lance_options()
    assert opts["aws_endpoint"] == "http://127.0.0.1:9" and opts["allow_http"] == "true"
    assert opts["aws_secret_access_key"] == "s3cr3t-value"
    assert job.table.storage.commit_lock == "host"


def test_rest_with_s3_is_accepted_and_lance_with_a_catalog_is_refused() -> None:
    DemoOptions("iceberg", "rest", "s3")
    DemoOptions("lance", "sql", "s3")
    with pytest.raises(ConfigError, match="expected --table-format iceberg with --catalog rest"):
        DemoOptions("lance", "rest", "local")
