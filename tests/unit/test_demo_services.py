"""``seamline demo --catalog/--storage``: the job file it writes, and the combinations it refuses."""

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


@pytest.mark.parametrize(
    ("fmt", "catalog", "storage", "expected"),
    [("lance", "sql", "s3", "expected --table-format iceberg, found lance"),
     ("lance", "rest", "local", "expected --table-format iceberg, found lance"),
     ("iceberg", "rest", "s3", "expected --storage local with --catalog rest, found s3")],
)
def test_unsupported_combinations_are_config_errors(
    fmt: str, catalog: str, storage: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        DemoOptions(fmt, catalog, storage)  # type: ignore[arg-type]
