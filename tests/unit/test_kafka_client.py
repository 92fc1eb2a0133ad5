"""The one Kafka client builder: its settings, its quiet logger, and secrets kept out.

No broker: the clients are real librdkafka clients, pointed at a closed local port where a
connection is needed.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from confluent_kafka import KafkaException

from coordinator.core.errors import ConfigError, ExitCode
from coordinator.core.values import Offset, PartitionId
from stream.kafka import client
from stream.kafka.offsets import PartitionOffsets, lag_from

SECRET = "s3cret-Value-9"
CONN = {"bootstrap.servers": "127.0.0.1:1", "security.protocol": "PLAINTEXT"}


def closed_port() -> str:
    """``127.0.0.1:<port>`` of a port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def test_consumer_settings_are_read_committed_groupless_and_never_auto_commit() -> None:
    a = client.consumer_config(CONN)
    b = client.consumer_config(CONN, purpose="cut")
    assert a["isolation.level"] == "read_committed"
    assert a["enable.auto.commit"] is False and a["enable.auto.offset.store"] is False
    assert a["group.id"].startswith("seamline-reader-") and b["group.id"].startswith("seamline-cut-")
    assert a["group.id"] != client.consumer_config(CONN)["group.id"]  # throwaway, per client
    assert a["bootstrap.servers"] == "127.0.0.1:1" and a["security.protocol"] == "PLAINTEXT"
    named = client.consumer_config(CONN, group="g1", extras={"isolation.level": "read_uncommitted"})
    assert named["group.id"] == "g1" and named["isolation.level"] == "read_uncommitted"


def test_every_client_gets_the_quiet_logger_error_callback_and_no_close_logs() -> None:
    conf = client.quiet_config(CONN, {"acks": "all"})
    assert conf["log.connection.close"] is False and conf["acks"] == "all"
    assert callable(conf["error_cb"]) and hasattr(conf["logger"], "log")
    assert conf["bootstrap.servers"] == "127.0.0.1:1"


def test_librdkafka_lines_go_to_debug_with_the_secret_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conf = client.quiet_config({**CONN, "sasl.password": SECRET})
    with caplog.at_level(logging.DEBUG, logger="stream.kafka.client"):
        conf["logger"].log(3, "FAIL|rdkafka#consumer-1| auth %s failed", f"app:{SECRET}")
        conf["error_cb"](_FakeKafkaError(f"Connect failed, password {SECRET}"))
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert [(n, lvl) for n, lvl, _m in lines] == [
        ("stream.kafka.client.librdkafka", logging.DEBUG),
        ("stream.kafka.client", logging.DEBUG),
    ]
    assert all(SECRET not in m for _n, _l, m in lines)
    assert "auth app:*** failed" in lines[0][2] and "***" in lines[1][2]


class _FakeKafkaError:
    def __init__(self, text: str) -> None:
        self.text = text

    def str(self) -> str:
        return self.text

    def fatal(self) -> bool:
        return False


def test_a_closed_port_prints_nothing_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    consumer = client.consumer({"bootstrap.servers": closed_port()})
    try:
        with pytest.raises(KafkaException):
            consumer.list_topics("orders", timeout=1.5)
    finally:
        consumer.close()
    admin = client.admin({"bootstrap.servers": closed_port()})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=1.5)
    err = capfd.readouterr().err
    assert "rdkafka" not in err and "Connection refused" not in err, err


@pytest.mark.parametrize("build", [client.consumer, client.producer, client.admin])
def test_a_bad_setting_is_a_config_error_without_the_secret(build: Any) -> None:
    conn = {**CONN, "sasl.password": SECRET, "no.such.property": SECRET}
    with pytest.raises(ConfigError) as info:
        build(conn)
    text = str(info.value)
    assert info.value.exit_code == ExitCode.CONFIG and "\n" not in text
    assert "no.such.property" in text and "bootstrap=127.0.0.1:1" in text
    assert SECRET not in text and "[stream.security]" in text


def test_scrubber_replaces_every_secret_value_and_credential_urls() -> None:
    scrub = client.Scrubber({"sasl.password": SECRET, "ssl.key.password": "k3y-pass"}).scrub
    assert scrub(f"a {SECRET} b k3y-pass c") == "a *** b *** c"
    assert scrub("sasl.password=other") == "sasl.password=***"
    assert client.Scrubber({"sasl.password": ""}).scrub("nothing secret") == "nothing secret"


def test_lag_counts_from_the_table_else_the_fallback_and_is_never_negative() -> None:
    def offs(d: dict[int, int]) -> dict[PartitionId, Offset]:
        return {PartitionId(p): Offset(o) for p, o in d.items()}

    lag = lag_from(offs({0: 10, 1: 5, 2: 7}), offs({0: 4}), offs({0: 0, 1: 7, 2: 2}))
    assert lag == {0: 6, 1: 0, 2: 5}


def test_partition_offsets_refuse_negative_offsets() -> None:
    with pytest.raises(ValueError, match="expected offsets >= 0"):
        PartitionOffsets(0, -1, 5, 5)  # type: ignore[arg-type]
