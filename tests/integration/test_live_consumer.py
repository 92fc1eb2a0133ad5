"""The live consumer on a real broker and a real Iceberg table: exactly once by (partition, offset)."""

from __future__ import annotations

import random
import signal
import socket
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from coordinator.service import open_live_sink
from coordinator.state.store import StateStore
from stream.kafka.quarantine import default_topic, read_quarantine
from stream.live.lag import live_lag
from tests.integration.test_live_support import (
    BackgroundProducer,
    ends,
    log_count,
    produce,
    start_live,
    stop_live,
    store_cut,
    table_offsets,
    table_rows,
    wait_until,
    write_job,
)

pytestmark = pytest.mark.integration


def _assert_exact(rows: list[tuple[int, int]], expected: set[tuple[int, int]]) -> None:
    dupes = [k for k, n in Counter(rows).items() if n > 1]
    assert not dupes, f"{len(dupes)} (partition, offset) written twice, e.g. {dupes[:5]}"
    got = set(rows)
    assert got == expected, (
        f"lost={len(expected - got)} e.g. {sorted(expected - got)[:5]}, "
        f"phantom={len(got - expected)} e.g. {sorted(got - expected)[:5]}"
    )


def test_live_starts_at_cut_and_sigterm_flushes(
    kafka_bootstrap: str, kafka_topic: object, tmp_path: Path
) -> None:
    topic = kafka_topic(3)  # type: ignore[operator]
    before = produce(kafka_bootstrap, topic, 600)  # history: below the cut
    job = write_job(tmp_path, kafka_bootstrap, topic, batch_seconds=30.0)
    store_cut(job, ends(before))
    port = _free_port()
    proc = start_live(job, "--metrics-port", str(port))
    wait_until(lambda: log_count(job, "assigned") > 0, 60, "the consumer's assignment")
    after = produce(kafka_bootstrap, topic, 900)
    time.sleep(2.0)  # batch_seconds is long: only SIGTERM can flush these
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert 'seamline_live_lag{job="livejob",partition="0"}' in metrics
    assert stop_live(proc) == 0
    _assert_exact(table_rows(job), set(after))
    assert table_offsets(job) == ends({**before, **after})
    sink = open_live_sink(job)
    assert live_lag(job.kafka_config(), topic, sink) == {0: 0, 1: 0, 2: 0}
    produce(kafka_bootstrap, topic, 30)
    assert live_lag(job.kafka_config(), topic, sink) == {0: 10, 1: 10, 2: 10}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    kafka_bootstrap: str, kafka_topic: object, tmp_path: Path
) -> None:
    topic = kafka_topic(3)  # type: ignore[operator]
    job = write_job(tmp_path, kafka_bootstrap, topic, batch_records=4000)
    store_cut(job, {0: 0, 1: 0, 2: 0})
    producer = BackgroundProducer(kafka_bootstrap, topic, 100_000, pace_every=2000, pace_s=1.0)
    producer.start()
    rng = random.Random(7)
    kills = 0
    while kills < 10:
        proc = start_live(job)
        time.sleep(rng.uniform(3.0, 8.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        kills += 1
    producer.join(120)
    assert producer.error is None and not producer.is_alive()
    proc = start_live(job)
    target = ends(producer.result)
    wait_until(lambda: table_offsets(job) == target, 90, f"table offsets {target}")
    assert stop_live(proc) == 0
    _assert_exact(table_rows(job), set(producer.result))
    assert len(producer.result) == 100_000


def test_poison_records_go_to_quarantine_with_their_offsets(
    kafka_bootstrap: str, kafka_topic: object, tmp_path: Path
) -> None:
    topic = kafka_topic(3)  # type: ignore[operator]
    job = write_job(tmp_path, kafka_bootstrap, topic)
    store_cut(job, {0: 0, 1: 0, 2: 0})

    def poison(i: int) -> bytes | None:
        if i % 100 != 37:
            return None
        kinds = [b"{not json", b'{"ts": 1700000000000, "name": "no id"}', b'{"id": "x", "ts": 1}']
        return kinds[(i // 100) % 3]

    delivered = produce(kafka_bootstrap, topic, 6000, poison=poison)
    bad = {k for k, v in delivered.items() if b'"id": ' not in v or b'"id": "x"' in v}
    assert len(bad) == 60
    proc = start_live(job)
    target = ends(delivered)
    wait_until(lambda: table_offsets(job) == target, 60, f"table offsets {target}")
    assert stop_live(proc) == 0
    _assert_exact(table_rows(job), set(delivered) - bad)
    dlq = job.live.quarantine_topic or default_topic(topic)
    assert read_quarantine(job.kafka_config(), dlq) == bad
    store = StateStore(job.state_url())
    try:
        assert sum(p.quarantined for p in store.get_live_progress(job.job_id)) == 60
    finally:
        store.close()


@pytest.mark.slow
def test_two_consumers_in_one_group_with_forced_rebalances(
    kafka_bootstrap: str, kafka_topic: object, tmp_path: Path
) -> None:
    topic = kafka_topic(3)  # type: ignore[operator]
    job = write_job(tmp_path, kafka_bootstrap, topic, batch_records=2000)
    store_cut(job, {0: 0, 1: 0, 2: 0})
    producer = BackgroundProducer(kafka_bootstrap, topic, 30_000, pace_every=1000, pace_s=0.5)
    producer.start()
    first = start_live(job)
    wait_until(lambda: log_count(job, "assigned") >= 1, 60, "first assignment")
    time.sleep(2.0)
    second = start_live(job)  # joining forces a rebalance mid-stream
    wait_until(lambda: log_count(job, "assigned") >= 3, 60, "rebalance to two members")
    time.sleep(2.0)
    first.send_signal(signal.SIGKILL)  # the survivor takes its partitions after the timeout
    first.wait(30)
    producer.join(120)
    assert producer.error is None and not producer.is_alive()
    target = ends(producer.result)
    wait_until(lambda: table_offsets(job) == target, 90, f"table offsets {target}")
    assert stop_live(second) == 0
    _assert_exact(table_rows(job), set(producer.result))
