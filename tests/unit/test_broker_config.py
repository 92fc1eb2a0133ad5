"""The local broker's set-up without starting one: errors for missing or old Java, missing
Maven and taken ports; rendered config; the broker record; the pinned Kafka version."""

from __future__ import annotations

import base64
import doctest
import re
import socket
import types
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

import stream.broker.probe
import stream.broker.setup
from coordinator.core.errors import BrokerError
from coordinator.testing import pytest_plugin
from stream.broker.local import LocalBroker, read_state, start_local, write_state
from stream.broker.provide import provide_broker
from stream.broker.setup import (
    KAFKA_VERSION,
    POM_PATH,
    ensure_kafka_jars,
    find_java,
    java_major_version,
    new_cluster_id,
    port_is_free,
    server_properties,
)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory that is the whole PATH; JAVA_HOME unset."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return path


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A loopback port some other process is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_missing_java_says_install_jdk_17(bin_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"no java executable.*JDK 17.*openjdk-17"):
        find_java()
    with pytest.raises(BrokerError, match="JDK 17"):
        start_local(tmp_path / "data")
    assert not (tmp_path / "data" / "broker.json").exists()


def test_old_java_is_refused_with_both_versions(bin_dir: Path) -> None:
    java = bin_dir / "java"
    java.write_text('#!/bin/sh\necho \'java version "1.8.0_402"\' >&2\n')
    java.chmod(0o755)
    with pytest.raises(BrokerError, match=r"expected 17 or newer, found 8.*JDK 17"):
        find_java()


@pytest.mark.parametrize(("text", "major"), [
    ('openjdk version "17.0.15" 2025-04-15', 17),
    ('openjdk version "21" 2023-09-19', 21),
    ('java version "1.8.0_402"', 8),
])
def test_java_major_version(text: str, major: int) -> None:
    assert java_major_version(text) == major


def test_missing_maven_with_cold_cache_says_install_maven(
        bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEAMLINE_CACHE_DIR", str(tmp_path / "cache"))
    half = tmp_path / "cache" / f"kafka-{KAFKA_VERSION}" / "libs"
    half.mkdir(parents=True)
    (half / "kafka_2.13-4.1.1.jar").write_bytes(b"")  # a half-downloaded cache is never used
    with pytest.raises(BrokerError, match=r"Maven \(mvn\) is not on PATH.*apt-get install maven"):
        ensure_kafka_jars()


def test_requested_port_taken_is_a_clear_error(listening_port: int, tmp_path: Path) -> None:
    assert not port_is_free(listening_port)
    with pytest.raises(BrokerError, match=rf"port 127\.0\.0\.1:{listening_port} is already in "
                                          r"use.*--port"):
        start_local(tmp_path / "data", port=listening_port)


def test_server_properties_single_node_kraft_on_loopback(tmp_path: Path) -> None:
    text = server_properties(port=9092, controller_port=9093, data_dir=tmp_path)
    props = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"


def test_cluster_id_is_22_chars_of_base64url_16_bytes() -> None:
    cluster_id = new_cluster_id()
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_cluster_id_never_starts_with_a_dash() -> None:
    # 0xf8.. encodes to "-..." in base64url; kafka-storage would read "-t -..." as an option.
    draws = iter([b"\xf8" + bytes(15), b"\x00" * 16])
    cluster_id = new_cluster_id(lambda: next(draws))
    assert cluster_id == "A" * 22


def test_pom_pins_the_kafka_version_and_a_log4j2_binding() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(POM_PATH).getroot()
    assert root.findtext("m:properties/m:kafka.version", namespaces=ns) == KAFKA_VERSION
    artifacts = [a.text for a in root.findall("m:dependencies/m:dependency/m:artifactId", ns)]
    assert artifacts == ["kafka_2.13", "log4j-slf4j-impl"]


def test_broker_record_round_trips_and_bad_record_is_an_error(tmp_path: Path) -> None:
    assert read_state(tmp_path) is None
    broker = LocalBroker(port=1234, controller_port=1235, cluster_id="x" * 22, pid=42,
                         started_at="2025-01-01T00:00:00+00:00")
    write_state(tmp_path, broker)
    assert read_state(tmp_path) == broker
    assert '"bootstrap": "127.0.0.1:1234"' in (tmp_path / "broker.json").read_text()
    (tmp_path / "broker.json").write_text("{}")
    with pytest.raises(BrokerError, match="unreadable broker record"):
        read_state(tmp_path)


def test_kafka_bootstrap_that_does_not_answer_is_an_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        monkeypatch.setenv("KAFKA_BOOTSTRAP", dead)
        with pytest.raises(BrokerError, match=f"KAFKA_BOOTSTRAP={dead} does not answer"), \
                provide_broker(tmp_path):
            pass


def test_unknown_seamline_kafka_mode_is_an_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("SEAMLINE_KAFKA", "docker")
    with pytest.raises(BrokerError, match="expected auto, container or local, found 'docker'"), \
            provide_broker(tmp_path):
        pass


@pytest.mark.parametrize("module", [stream.broker.setup, stream.broker.probe, pytest_plugin])
def test_docstring_examples(module: types.ModuleType) -> None:
    failed, _ = doctest.testmod(module)
    assert failed == 0

