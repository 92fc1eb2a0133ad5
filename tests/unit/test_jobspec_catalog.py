"""``[table] catalog`` and ``[table.storage]``: any pyiceberg catalog, validated up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.core.errors import ConfigError, ExitCode
from coordinator.core.jobspec import load_job
from coordinator.core.logs import redact

BASE = """
[stream]
bootstrap = "127.0.0.1:39092"
topic = "orders"

[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"

[table]
format = "iceberg"
identifier = "demo.orders"
"""


def job_text(tmp_path: Path, table_lines: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(BASE + table_lines)
    return path


def config_error(tmp_path: Path, table_lines: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_job(job_text(tmp_path, table_lines))
    assert info.value.exit_code == ExitCode.CONFIG
    return str(info.value)


def test_rest_catalog_with_secrets_maps_onto_load_catalog_properties(tmp_path: Path) -> None:
    job = load_job(job_text(tmp_path, """
catalog = { type = "rest", uri = "http://127.0.0.1:8181", credential = "cid:csecret", \
warehouse = "s3://bucket/wh", properties = { "header.X-Iceberg-Access-Delegation" = "" } }
[table.storage]
endpoint = "http://127.0.0.1:9000"
region = "us-east-1"
access_key_id = "AKIDEXAMPLE"
secret_access_key = "wJalrXUtnFEMI"
path_style = true
"""))
    spec = job.table.catalog_spec()
    assert spec is not None and spec.type == "rest" and spec.name == "seamline"
    assert spec.load_properties(job.table.catalog_warehouse()) == {
        "type": "rest", "uri": "http://127.0.0.1:8181", "credential": "cid:csecret",
        "warehouse": "s3://bucket/wh", "header.X-Iceberg-Access-Delegation": "",
    }
    assert job.table.storage.iceberg_properties() == {
        "s3.endpoint": "http://127.0.0.1:9000", "s3.region": "us-east-1",
        "s3.access-key-id": "AKIDEXAMPLE", "s3.secret-access-key": "wJalrXUtnFEMI",
        "s3.force-virtual-addressing": "false", "s3.path-style-access": "true",
    }
    shown = repr(job.table)
    for secret in ("cid:csecret", "AKIDEXAMPLE", "wJalrXUtnFEMI", "127.0.0.1:8181"):
        assert secret not in shown


def test_legacy_flat_keys_mean_a_sql_catalog(tmp_path: Path) -> None:
    job = load_job(job_text(tmp_path, """catalog_uri = "sqlite:///cat.db"
catalog_name = "old"
warehouse = "wh"
[table.catalog_properties]
"pyiceberg.x" = "1"
"""))
    spec = job.table.catalog_spec()
    assert spec is not None and (spec.type, spec.name) == ("sql", "old")
    assert spec.load_properties("file:///wh") == {
        "type": "sql", "uri": "sqlite:///cat.db", "pyiceberg.x": "1", "warehouse": "file:///wh",
    }


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ('catalog = { type = "nessie", uri = "http://x" }',
         "key=table.catalog.type: expected one of"),
        ('catalog = { type = "rets", uri = "http://x" }', "did you mean 'rest'?"),
        ('catalog = { type = "rest", uri = "sqlite:///c.db" }',
         "key=table.catalog.uri: catalog type 'rest' expected a http:/https: URI, "
         "found scheme 'sqlite'"),
        ('catalog = { type = "sql", uri = "http://127.0.0.1:8181" }',
         "key=table.catalog.uri: catalog type 'sql' expected a"),
        ('catalog = { type = "hive", uri = "http://h:9083" }', "found scheme 'http'"),
        ('catalog = { type = "rest" }', "key=table.catalog.uri: catalog type 'rest' needs a uri"),
        ('catalog = { type = "glue", uri = "http://g" }', "catalog type 'glue' takes no uri"),
        ('catalog = { type = "rest", url = "http://x" }',
         "key=table.catalog.url: unknown key (did you mean 'uri'?)"),
        ('catalog = { type = "rest", uri = "http://x" }\ncatalog_uri = "sqlite:///c.db"',
         "key=table.catalog_uri: expected either 'catalog' or the older flat catalog keys"),
        ('catalog_uri = "sqlite:///c.db"\n[table.storage]\nendpoint = "ftp://x"',
         "key=table.storage.endpoint: expected an http:// or https:// endpoint"),
        ('catalog_uri = "sqlite:///c.db"\n[table.storage]\nacess_key_id = "A"',
         "(did you mean 'access_key_id'?)"),
    ],
)
def test_bad_catalog_or_storage_is_a_config_error_naming_the_key(
    tmp_path: Path, lines: str, expected: str
) -> None:
    assert expected in config_error(tmp_path, lines)


def test_a_secret_in_a_bad_catalog_is_never_echoed(tmp_path: Path) -> None:
    msg = config_error(tmp_path, 'catalog = { type = "rest", uri = "ftp://u:hunter2@h", '
                                 'token = 5 }')
    assert "hunter2" not in msg
    msg = config_error(tmp_path, 'catalog = { type = "rest", uri = 12345 }')
    assert "key=table.catalog.uri" in msg and "12345" not in msg


def test_storage_for_lance_needs_an_s3_dataset_uri(tmp_path: Path) -> None:
    text = BASE.replace('format = "iceberg"\nidentifier = "demo.orders"',
                        'format = "lance"\nuri = "o.lance"')
    path = tmp_path / "job.toml"
    path.write_text(text + '[table.storage]\nregion = "eu-west-1"\n')
    with pytest.raises(ConfigError, match=r"key=table\.storage: expected an s3:// table\.uri"):
        load_job(path)
    path.write_text(text.replace('uri = "o.lance"', 'uri = "s3://b/o.lance"')
                    + '[table.storage]\nregion = "eu-west-1"\n')
    assert load_job(path).table.storage.lance_options() == {"aws_region": "eu-west-1"}


def test_redaction_masks_pyiceberg_and_object_store_secret_properties() -> None:
    line = ("s3.access-key-id=AKID s3.secret-access-key=SECRET1 credential=cid:CSEC "
            "token: TOK aws_secret_access_key=SECRET2")
    out = redact(line)
    for secret in ("AKID", "SECRET1", "CSEC", "TOK", "SECRET2"):
        assert secret not in out


def test_a_rest_servers_own_metadata_cleanup_is_not_a_warning_per_commit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from backfill.sinks import _quiet_double_metadata_delete

    _quiet_double_metadata_delete()
    _quiet_double_metadata_delete()  # idempotent: one filter
    logger = logging.getLogger("pyiceberg.catalog")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="pyiceberg.catalog"):
        logger.warning("Failed to delete metadata file s3://b/m/00001.metadata.json")
        logger.warning("Failed to delete data file s3://b/d/x.parquet")
    assert [r.getMessage() for r in caplog.records] == [
        "Failed to delete data file s3://b/d/x.parquet"
    ]
