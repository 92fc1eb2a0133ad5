"""docker-compose.yml: the services users get, pinned, wired to each other."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.broker.setup import KAFKA_VERSION
from tests.apt import apt_install

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(COMPOSE.read_text())
    result: dict[str, dict[str, Any]] = doc["services"]
    return result


def test_services_are_kafka_minio_bucket_job_and_rest_catalog(
        services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"kafka", "minio", "minio-create-bucket", "iceberg-rest"}


def test_every_image_is_pinned_to_a_tag(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image, _, tag = service["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name}: {service['image']}"


def test_kafka_is_the_same_version_as_the_local_broker_kraft_on_9092(
        services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    env = kafka["environment"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert "9092:9092" in kafka["ports"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "EXTERNAL://localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert "healthcheck" in kafka


def test_bucket_job_waits_for_minio_and_creates_the_warehouse_bucket(
        services: dict[str, dict[str, Any]]) -> None:
    job = services["minio-create-bucket"]
    assert job["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert job["image"].startswith("minio/mc:")
    assert "healthcheck" in services["minio"]
    script = " ".join(job["command"])
    assert "http://minio:9000" in script
    assert "mc mb --ignore-existing seamline/warehouse" in script


def test_rest_catalog_uses_minio_and_the_created_bucket(
        services: dict[str, dict[str, Any]]) -> None:
    rest = services["iceberg-rest"]
    env = rest["environment"]
    assert rest["depends_on"] == {
        "minio-create-bucket": {"condition": "service_completed_successfully"}}
    assert "8181:8181" in rest["ports"]
    assert env["CATALOG_S3_ENDPOINT"] == "http://minio:9000"
    assert env["CATALOG_WAREHOUSE"] == "s3://warehouse/"
    assert env["CATALOG_S3_PATH__STYLE__ACCESS"] == "true"
    minio = services["minio"]["environment"]
    bucket_job = services["minio-create-bucket"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"] == bucket_job["S3_ACCESS_KEY"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"] \
        == bucket_job["S3_SECRET_KEY"]


def _compose_command() -> list[str]:
    """``docker compose`` (v2) where the plugin exists, else Debian's ``docker-compose``.

    Neither needs a Docker engine to validate a file. When neither is installed, Debian's
    package is installed (the tests run as root on our machines and in CI); if that fails the
    test fails with the reason rather than skipping.
    """
    if shutil.which("docker"):
        done = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose") is None:
        done = apt_install("docker-compose")
        if done.returncode != 0:
            pytest.fail(f"cannot install docker-compose to validate the file: {done.stderr}")
    return ["docker-compose"]


def test_docker_compose_accepts_the_file() -> None:
    done = subprocess.run([*_compose_command(), "-f", str(COMPOSE), "config", "-q"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_docker_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("image:", "imagee:", 1))
    done = subprocess.run([*_compose_command(), "-f", str(broken), "config", "-q"],
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0


def _compose_default(value: str) -> tuple[str, str]:
    """``${NAME:-default}`` -> (NAME, default)."""
    found = re.fullmatch(r"\$\{([A-Z0-9_]+):-([^}]*)\}", value)
    assert found is not None, value
    return found.group(1), found.group(2)


def test_the_readme_job_snippet_uses_these_services(
        services: dict[str, dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator.core.jobspec import load_job

    readme = (COMPOSE.parent / "README.md").read_text()
    block = readme.split("<!-- compose-job:start -->", 1)[1].split("<!-- compose-job:end -->")[0]
    snippet = block.split("```toml", 1)[1].split("```", 1)[0]
    minio = services["minio"]["environment"]
    rest = services["iceberg-rest"]
    key_var, key_default = _compose_default(minio["MINIO_ROOT_USER"])
    secret_var, secret_default = _compose_default(minio["MINIO_ROOT_PASSWORD"])
    monkeypatch.setenv(key_var, key_default)
    monkeypatch.setenv(secret_var, secret_default)
    job_file = tmp_path / "job.toml"
    job_file.write_text('[stream]\nbootstrap = "localhost:9092"\ntopic = "orders"\n'
                        '[schema]\nevent_time = "ts"\n[schema.fields]\nts = "timestamp_ms"\n'
                        + snippet)
    table = load_job(job_file).table
    catalog = table.catalog_spec()
    assert catalog is not None and catalog.type == "rest" and catalog.uri is not None
    rest_port = catalog.uri.get_secret_value().rsplit(":", 1)[1]
    assert f"{rest_port}:{rest_port}" in rest["ports"]
    assert f"its warehouse: {rest['environment']['CATALOG_WAREHOUSE']}" in snippet
    bucket = rest["environment"]["CATALOG_WAREHOUSE"].removeprefix("s3://").strip("/")
    assert f"seamline/{bucket}" in " ".join(services["minio-create-bucket"]["command"])
    props = table.storage.iceberg_properties()
    s3_port = props["s3.endpoint"].rsplit(":", 1)[1]
    assert f"{s3_port}:{s3_port}" in services["minio"]["ports"]
    assert props["s3.region"] == rest["environment"]["AWS_REGION"]
    assert props["s3.path-style-access"] == rest["environment"]["CATALOG_S3_PATH__STYLE__ACCESS"]
    assert props["s3.access-key-id"] == key_default
    assert props["s3.secret-access-key"] == secret_default
    assert table.storage.commit_lock == "none"  # MinIO's conditional put is atomic
