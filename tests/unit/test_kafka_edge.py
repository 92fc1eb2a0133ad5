"""The Kafka edge has one home: only ``stream/kafka/client.py`` constructs a confluent-kafka
client, and the Faust engine connects with the job's ``[stream.security]``."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path
from typing import Any, cast

import faust
import pyarrow as pa
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from coordinator.core.jobspec import load_job
from stream.live.core import BatchLimits
from stream.live.faust_engine import broker_credentials, build_app
from stream.live.loop import LiveSettings

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("coordinator", "stream", "backfill", "reconcile")
BUILDER = Path("stream/kafka/client.py")
# Test infrastructure users load in their own tests: the fault oracle must share no code with
# the product's Kafka edge (it checks that edge), and the fixtures talk to the test broker only.
INDEPENDENT = Path("coordinator/testing")
CLIENTS = {"Consumer", "Producer", "AdminClient", "DeserializingConsumer", "SerializingProducer"}


def constructions(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every confluent-kafka client constructed in ``source``.

    Follows ``from confluent_kafka[.x] import Consumer [as C]`` and
    ``import confluent_kafka[.x] [as ck]`` (then ``ck.Consumer(...)``).
    """
    tree = ast.parse(source)
    names: dict[str, str] = {}
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("confluent_kafka"):
            names.update({a.asname or a.name: a.name for a in node.names if a.name in CLIENTS})
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("confluent_kafka"):
                    modules.add(a.asname or a.name.split(".")[0])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in names:
            found.append((node.lineno, names[func.id]))
        elif isinstance(func, ast.Attribute) and func.attr in CLIENTS:
            root = func.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                found.append((node.lineno, func.attr))
    return found


def test_the_checker_finds_every_way_of_constructing_a_client() -> None:
    source = (
        "from confluent_kafka import Consumer, TopicPartition\n"
        "from confluent_kafka.admin import AdminClient as Admin\n"
        "import confluent_kafka as ck\n"
        "import confluent_kafka.admin\n"
        "def f(conf):\n"
        "    Consumer(conf)\n"
        "    Admin(conf)\n"
        "    ck.Producer(conf)\n"
        "    confluent_kafka.admin.AdminClient(conf)\n"
        "    TopicPartition('t', 0)\n"
        "    LiveConsumer(conf)\n"
    )
    assert constructions(source) == [
        (6, "Consumer"),
        (7, "AdminClient"),
        (8, "Producer"),
        (9, "AdminClient"),
    ]


def test_no_product_module_but_the_builder_constructs_a_kafka_client() -> None:
    offenders: list[str] = []
    checked = 0
    for package in PRODUCT:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO)
            if rel == BUILDER or rel.is_relative_to(INDEPENDENT):
                continue
            checked += 1
            for line, name in constructions(path.read_text()):
                offenders.append(f"{rel}:{line} constructs {name}")
    assert checked > 50
    assert offenders == [], "build Kafka clients with stream.kafka.client: " + "; ".join(offenders)


JOB = """
[job]
id = "orders"

[stream]
bootstrap = "k1.example:9094,k2.example:9094"
topic = "orders"
group = "orders-live"
[stream.security]
protocol = "{protocol}"
{extra}

[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"

[table]
format = "lance"
uri = "out/orders.lance"
"""

SASL = 'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "app"\nsasl_password = "${KAFKA_PW}"'


class _NoWriter:
    def write(self, events: list[tuple[int, int, bytes | None]]) -> None:
        raise AssertionError("no event is consumed in this test")


def _app(tmp_path: Path, protocol: str, extra: str) -> faust.App:
    path = tmp_path / "job.toml"
    path.write_text(JOB.format(protocol=protocol, extra=extra))
    job = load_job(path)
    settings = LiveSettings(
        job_id=job.job_id,
        topic=job.stream.topic,
        group=job.stream.group or "g",
        schema=pa.schema([("order_id", pa.int64())]),
        limits=BatchLimits(100, 1.0, 0.0),
    )
    return build_app(settings, job.kafka_config(), cast(Any, _NoWriter()))


def test_faust_app_connects_with_sasl_ssl_from_the_job(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("KAFKA_PW", "s3cret-Value-9")
    app = _app(tmp_path, "SASL_SSL", SASL)
    assert [str(u) for u in app.conf.broker] == ["kafka://k1.example:9094", "kafka://k2.example:9094"]
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds, app.conf.ssl_context)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "app"
    assert auth["sasl_plain_password"] == "s3cret-Value-9"
    context = auth["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert "s3cret-Value-9" not in repr(creds)


def test_faust_app_maps_ssl_sasl_plaintext_and_plaintext(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("KAFKA_PW", "pw")
    ssl_auth = credentials_to_aiokafka_auth(_app(tmp_path, "SSL", "").conf.broker_credentials)
    assert ssl_auth["security_protocol"] == "SSL"
    assert isinstance(ssl_auth["ssl_context"], ssl.SSLContext)
    sasl = credentials_to_aiokafka_auth(
        _app(tmp_path, "SASL_PLAINTEXT", SASL).conf.broker_credentials
    )
    assert sasl["security_protocol"] == "SASL_PLAINTEXT" and sasl["ssl_context"] is None
    assert (sasl["sasl_plain_username"], sasl["sasl_plain_password"]) == ("app", "pw")
    assert _app(tmp_path, "PLAINTEXT", "").conf.broker_credentials is None
    assert broker_credentials({"bootstrap.servers": "b:1"}) is None
