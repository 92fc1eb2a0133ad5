"""The demo's moving parts: a steady live producer, the ``seamline live`` process, lag watching.

* :class:`LiveProducer` produces current orders at a steady rate in a thread, plus a few late
  events (event time in an archived historical day: they must survive that month's backfill
  overwrite) and a few malformed records (they must end in quarantine, not in the table).
* :class:`LiveProcess` runs ``seamline live JOB`` as a subprocess in its own session (so a
  Ctrl-C reaches the demo, which then stops it in order: SIGTERM, flush, exit 0).
* :class:`LagWatch` samples the live lag (table offsets vs high watermarks) once a second.
* :class:`LiveGuard` watches the live process during the backfill: if it exits, the backfill
  is stopped at once with the consumer's exit code and log tail (otherwise the lag gate would
  hold every slice back until its ``max_wait_s`` ran out, which looks like a hang).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.core.errors import LiveError
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Offset, PartitionId
from coordinator.demo.data import DemoWindow
from stream.kafka import client

log = logging.getLogger(__name__)

LATE_EVERY = 100  # one late event (historical event time) per this many live records
POISON_AT = (50, 250)  # live record numbers that are malformed on purpose
_CURRENCIES = ("EUR", "USD", "GBP", "CHF")
_STATUSES = ("placed", "paid")


class LiveProducer(threading.Thread):
    """Produces live orders at ``rate`` per second until :meth:`stop`."""

    def __init__(
        self, bootstrap: str, topic: str, first_id: int, window: DemoWindow, rate: float = 200.0
    ) -> None:
        super().__init__(name="demo-live-producer", daemon=True)
        self.topic, self.first_id, self.window, self.rate = topic, first_id, window, rate
        self._producer: Any = client.producer(
            client.plain(bootstrap),
            extras={"linger.ms": 20, "acks": "all", "enable.idempotence": True, "log_level": 3},
        )
        self._halt = threading.Event()
        self._rng = np.random.default_rng(11)
        self.sent = self.late = self.poison = 0
        self.errors: list[str] = []

    def message(self, n: int) -> tuple[bytes, bytes]:
        """Live record number ``n``: a current order, a late one, or a malformed one."""
        order_id = self.first_id + n
        if n in POISON_AT:
            self.poison += 1
            bad = b"{not json" if n == POISON_AT[0] else json.dumps({"amount": 1.0}).encode()
            return str(order_id).encode(), bad
        now = datetime.now(UTC)
        if n % LATE_EVERY == LATE_EVERY // 2:
            self.late += 1
            days = int(self._rng.integers(0, (self.window.archive_end - self.window.start).days))
            now = self.window.start + timedelta(days=days, hours=12)
        doc = {
            "order_id": order_id,
            "customer": f"c{int(self._rng.integers(0, 20_000)):05d}",
            "amount": round(float(self._rng.gamma(2.0, 40.0)), 2),
            "currency": _CURRENCIES[n % len(_CURRENCIES)],
            "status": _STATUSES[n % len(_STATUSES)],
            "ts": int(now.timestamp() * 1000),
        }
        return str(order_id).encode(), json.dumps(doc, separators=(",", ":")).encode()

    def _done(self, err: object, _msg: object) -> None:
        if err is not None:
            self.errors.append(str(err))

    def run(self) -> None:
        """Produce in 0.1 s ticks, keeping the average rate steady."""
        producer = self._producer
        assert producer is not None
        t0 = time.monotonic()
        while not self._halt.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            while self.sent < due:
                key, value = self.message(self.sent)
                producer.produce(self.topic, key=key, value=value, on_delivery=self._done)
                self.sent += 1
            producer.poll(0)
            self._halt.wait(0.1)

    def wait_for(self, count: int, timeout_s: float) -> None:
        """Block until at least ``count`` records were produced (or ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self.sent < count and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop producing and wait until every record is acknowledged."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout_s)
        if self._producer is None:
            return
        left = self._producer.flush(timeout_s)
        self._producer = None  # released now, not after the broker stopped (no reconnect noise)
        if left or self.errors:
            raise LiveError(
                f"topic={self.topic}: expected every live record acknowledged, found {left} "
                f"pending and {len(self.errors)} failed ({self.errors[:1]})",
                hint="check the broker log",
            )


def seamline_command(*args: str) -> list[str]:
    """``seamline ARGS`` run by this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-c", "from coordinator.cli.main import main; main()", *args]


class LiveProcess:
    """``seamline live JOB`` as a child process in its own session."""

    def __init__(self, job_file: Path, log_file: Path) -> None:
        self.job_file, self.log_file = job_file, log_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid once started."""
        return self.proc.pid if self.proc is not None else None

    def start(self) -> int:
        """Start the consumer; returns its pid."""
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                seamline_command("--log-level", "INFO", "live", str(self.job_file)),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        log.info("live consumer pid=%d started", self.proc.pid)
        return self.proc.pid

    def check_running(self) -> None:
        """``LiveError`` if the consumer exited (with the tail of its log)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise LiveError(
                f"live consumer pid={self.proc.pid} exited with code={self.proc.returncode}",
                hint=f"see {self.log_file}: {self._tail()}",
            )

    def _tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (flush, commit, exit 0); SIGKILL after ``timeout_s``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("live consumer pid=%d ignored SIGTERM; killing it", self.proc.pid)
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class LiveGuard(threading.Thread):
    """Calls ``on_death`` once if the live process exits while guarded; keeps the error."""

    def __init__(self, live: LiveProcess, on_death: Callable[[], None], every_s: float = 0.5) -> None:
        super().__init__(name="demo-live-guard", daemon=True)
        self.live, self.on_death, self.every_s = live, on_death, every_s
        self.error: LiveError | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        """Poll the process until stopped or dead."""
        while not self._halt.wait(self.every_s):
            try:
                self.live.check_running()
            except LiveError as exc:
                self.error = exc
                log.error("%s; stopping the backfill (%s)", exc, exc.hint)
                self.on_death()
                return

    def stop(self) -> LiveError | None:
        """Stop guarding; the error if the process died meanwhile."""
        self._halt.set()
        if self.is_alive():
            self.join(5)
        return self.error


MeasureLag = Callable[[], Mapping[int, int]]


def lag_probe(job: JobSpec, start_offsets: Mapping[PartitionId, Offset]) -> MeasureLag:
    """Live lag per partition: the topic's high watermark minus the table's live offset."""
    from coordinator.service import open_table
    from stream.live.lag import live_lag

    sink = open_table(job)
    conf = job.kafka_config()
    return lambda: live_lag(conf, job.stream.topic, sink, start_offsets, timeout_s=10.0)


class LagWatch(threading.Thread):
    """Samples the live lag every ``every_s`` seconds; keeps the largest partition lag seen."""

    def __init__(self, measure: MeasureLag, every_s: float = 1.0) -> None:
        super().__init__(name="demo-lag-watch", daemon=True)
        self.measure, self.every_s = measure, every_s
        self.max_lag = 0
        self.last: Mapping[int, int] = {}
        self.samples: list[tuple[datetime, int]] = []  # (when, largest partition lag)
        self._halt = threading.Event()

    def run(self) -> None:
        """Sample until stopped (a failed sample is skipped)."""
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.every_s)

    def sample(self) -> Mapping[int, int]:
        """One measurement (``{}`` when it failed)."""
        try:
            self.last = dict(self.measure())
        except Exception as exc:  # monitoring only: Kafka or table hiccups are not fatal
            log.debug("lag sample failed: %s", exc)
            return {}
        self.max_lag = max([self.max_lag, *self.last.values()])
        self.samples.append((datetime.now(UTC), max(self.last.values(), default=0)))
        return self.last

    def stop(self) -> None:
        """Stop sampling."""
        self._halt.set()
        if self.is_alive():
            self.join(15)


def wait_caught_up(
    watch: LagWatch, live: LiveProcess, deadline_s: float, cancelled: threading.Event
) -> Mapping[int, int]:
    """Wait until the live lag is 0 on every partition; ``LiveError`` after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    lags: Mapping[int, int] = {}
    while time.monotonic() < deadline and not cancelled.is_set():
        live.check_running()
        lags = watch.sample()
        if lags and all(v == 0 for v in lags.values()):
            return lags
        time.sleep(0.5)
    raise LiveError(
        f"expected live lag 0 on every partition within {deadline_s:.0f}s, found {dict(lags)}",
        hint=f"see {live.log_file}",
    )
