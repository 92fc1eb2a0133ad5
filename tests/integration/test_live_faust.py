"""The Faust live worker on a real broker and Iceberg table: kill -9 and restarts, exactly once."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.test_live_support import (
    BackgroundProducer,
    ends,
    log_count,
    start_live,
    stop_live,
    store_cut,
    table_offsets,
    table_rows,
    wait_until,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_faust_worker_survives_kill_9_exactly_once(
    kafka_bootstrap: str, kafka_topic: object, tmp_path: Path
) -> None:
    topic = kafka_topic(3)  # type: ignore[operator]
    job = write_job(tmp_path, kafka_bootstrap, topic, batch_records=2000)
    store_cut(job, {0: 0, 1: 0, 2: 0})
    producer = BackgroundProducer(kafka_bootstrap, topic, 30_000, pace_every=1000, pace_s=1.0)
    producer.start()
    rng = random.Random(11)
    for _ in range(3):
        proc = start_live(job, "--engine", "faust")
        time.sleep(rng.uniform(6.0, 12.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    ready = log_count(job, "Worker]: Ready")
    producer.join(120)
    assert producer.error is None and not producer.is_alive()
    proc = start_live(job, "--engine", "faust")
    wait_until(lambda: log_count(job, "Worker]: Ready") >= 1 + ready, 90, "the worker to start")
    target = ends(producer.result)
    wait_until(lambda: table_offsets(job) == target, 120, f"table offsets {target}")
    assert stop_live(proc) == 0
    rows = table_rows(job)
    dupes = [k for k, n in Counter(rows).items() if n > 1]
    assert not dupes, f"{len(dupes)} written twice, e.g. {dupes[:5]}"
    assert set(rows) == set(producer.result)
