"""The broker foundation against a real Kafka: exact offsets and watermarks, and the local
broker's lifecycle (reuse, restart keeping data, clean stop) through the API and the CLI."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from coordinator.cli.main import cli
from coordinator.testing.pytest_plugin import TopicFactory
from stream.broker.admin import create_topic
from stream.broker.provide import local_status, start_local, stop_local

pytestmark = pytest.mark.integration

N_MESSAGES = 10_000
Delivered = dict[tuple[int, int], bytes]  # (partition, offset) -> key


def _produce(bootstrap: str, topic: str, n: int) -> Delivered:
    """Produce ``n`` keyed messages; return what the delivery reports said, asserting no error."""
    delivered: Delivered = {}
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
            return
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        delivered[(partition, offset)] = msg.key() or b""

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5})
    for i in range(n):
        producer.produce(topic, key=f"key-{i}".encode(), value=f"value-{i}".encode(),
                         on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []
    assert len(delivered) == n
    return delivered


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": "seamline-test-reader",
                     "enable.auto.commit": False, "isolation.level": "read_committed"})


def _read(bootstrap: str, starts: list[TopicPartition], expected: int) -> Delivered:
    """Read exactly ``expected`` records from the assigned start offsets (keyed by position)."""
    consumer = _consumer(bootstrap)
    got: Delivered = {}
    deadline = time.monotonic() + 60
    try:
        consumer.assign(starts)
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                assert (partition, offset) not in got, "a record was delivered twice"
                got[(partition, offset)] = msg.key() or b""
    finally:
        consumer.close()
    return got


NO_LEADER_YET = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
}


def _watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    """Every partition's watermarks; a retriable error (no leader yet: a restarted broker is
    still loading its partitions, slowly on a loaded host) is asked again for up to 60 s."""
    consumer = _consumer(bootstrap)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                        for p in range(partitions)}  # fmt: skip
            except KafkaException as exc:
                if exc.args[0].code() not in NO_LEADER_YET or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def test_ten_thousand_keyed_messages_exact_offsets_and_watermarks(
        kafka_bootstrap: str, kafka_topic: TopicFactory) -> None:
    topic = kafka_topic(partitions=3)
    delivered = _produce(kafka_bootstrap, topic, N_MESSAGES)
    per_partition = Counter(p for p, _ in delivered)
    assert sorted(per_partition) == [0, 1, 2]
    for p, count in per_partition.items():  # idempotent, non-transactional: offsets are dense
        assert sorted(o for q, o in delivered if q == p) == list(range(count))

    marks = _watermarks(kafka_bootstrap, topic, 3)
    assert marks == {p: (0, per_partition[p]) for p in range(3)}
    assert sum(high for _, high in marks.values()) == N_MESSAGES

    everything = _read(kafka_bootstrap, [TopicPartition(topic, p, 0) for p in range(3)],
                       N_MESSAGES)
    assert everything == delivered

    tail = _read(kafka_bootstrap, [TopicPartition(topic, 1, 100)], per_partition[1] - 100)
    assert tail == {k: v for k, v in delivered.items() if k[0] == 1 and k[1] >= 100}


def _java_pids_for(data_dir: Path) -> list[int]:
    """Every process whose command line names this data dir's server.properties (via ps)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True,
                         check=True).stdout
    needle = str(data_dir.resolve() / "server.properties")
    return [int(line.split(None, 1)[0]) for line in out.splitlines()
            if needle in line and "kafka.Kafka" in line]


@pytest.fixture
def broker_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir for a test's own local broker, always stopped at teardown."""
    data_dir = tmp_path / "broker"
    yield data_dir
    stop_local(data_dir)
    assert _java_pids_for(data_dir) == []


def test_local_broker_reuse_restart_keeps_data_and_stop_leaves_nothing(
        broker_dir: Path) -> None:
    first = start_local(broker_dir)
    assert first.pid is not None
    create_topic(first.bootstrap, "kept", partitions=2)
    delivered = _produce(first.bootstrap, "kept", 50)

    again = start_local(broker_dir)
    assert (again.pid, again.bootstrap) == (first.pid, first.bootstrap)
    assert local_status(broker_dir).state == "serving"

    assert stop_local(broker_dir) == [first.pid]
    assert _java_pids_for(broker_dir) == []
    with pytest.raises(ProcessLookupError):
        os.kill(first.pid, 0)
    assert local_status(broker_dir).state == "stopped"

    restarted = start_local(broker_dir)
    assert restarted.pid != first.pid
    assert (restarted.port, restarted.cluster_id) == (first.port, first.cluster_id)
    counts = Counter(p for p, _ in delivered)
    assert _watermarks(restarted.bootstrap, "kept", 2) == {p: (0, counts[p]) for p in (0, 1)}
    starts = [TopicPartition("kept", p, 0) for p in (0, 1)]
    assert _read(restarted.bootstrap, starts, 50) == delivered


def _seamline(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``seamline`` console script (a separate process, like a user would)."""
    script = Path(sys.executable).parent / "seamline"
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=env,
                          timeout=180, check=False)


@pytest.fixture
def runner() -> Iterator[CliRunner]:
    """Click's runner; the root logger the CLI configures is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CliRunner()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_cli_start_status_smoke_stop_contract(
        broker_dir: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _seamline("broker", "start", "--data-dir", str(broker_dir))
    assert started.returncode == 0, started.stderr
    assert re.fullmatch(r"bootstrap=127\.0\.0\.1:\d+\n", started.stdout)

    # The CLI process has exited; the broker it started in its own session keeps serving.
    status = _seamline("broker", "status", "--data-dir", str(broker_dir))
    assert (status.returncode, status.stdout) == (0, started.stdout)

    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    again = runner.invoke(cli, ["broker", "start", "--data-dir", str(broker_dir)])
    assert (again.exit_code, again.stdout) == (0, started.stdout)

    smoke = runner.invoke(cli, ["broker", "smoke", "--data-dir", str(broker_dir)])
    assert smoke.exit_code == 0, smoke.output
    assert smoke.stdout.startswith(started.stdout)
    assert "round_trip=ok" in smoke.stdout

    stopped = runner.invoke(cli, ["broker", "stop", "--data-dir", str(broker_dir)])
    assert stopped.exit_code == 0 and stopped.stdout.startswith("stopped pid=")
    assert _java_pids_for(broker_dir) == []
    after = _seamline("broker", "status", "--data-dir", str(broker_dir))
    assert (after.returncode, after.stdout) == (1, "")
    assert "seamline broker start" in after.stderr
