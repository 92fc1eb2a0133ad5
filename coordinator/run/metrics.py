"""Prometheus metrics of ``seamline run --metrics-port`` (loopback unless told otherwise).

Slice states and lag-pause seconds are read from the state store when scraped (the durable
truth, also after a resume); rows, rows/s and retries come from the runner's progress
events through :class:`MetricsProgress`, which forwards everything to the terminal's sink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from coordinator.run.progress import ProgressSink

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
SLICE_STATES = ("pending", "running", "staged", "committed", "failed", "reconciled")


class RunMetrics:
    """The registry of one run: slices by state, rows, rows/s, retries, lag-pause seconds."""

    def __init__(
        self,
        job_id: str,
        slice_counts: Callable[[], Mapping[str, int]],
        pause_seconds: Callable[[], float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.job_id = job_id
        slices = Gauge("seamline_run_slices", "Slices of the plan by state (state store)",
                       ["job", "state"], registry=r)  # fmt: skip
        for state in SLICE_STATES:
            slices.labels(job_id, state).set_function(
                lambda s=state: float(slice_counts().get(s, 0))  # type: ignore[misc]
            )
        paused = Gauge("seamline_run_lag_pause_seconds", "Seconds the backfill paused for live "
                       "lag (state store)", ["job"], registry=r)  # fmt: skip
        paused.labels(job_id).set_function(pause_seconds)
        self.rows = Counter("seamline_run_rows", "Rows committed by this run", ["job"], registry=r)
        self.retries = Counter("seamline_run_retries", "Slice retries scheduled", ["job"],
                               registry=r)  # fmt: skip
        self.rate = Gauge("seamline_run_rows_per_second", "Rows committed per second so far",
                          ["job"], registry=r)  # fmt: skip
        for metric in (self.rows, self.retries, self.rate):
            metric.labels(job_id)  # exported as 0 from the first scrape

    def serve(self, port: int, host: str = DEFAULT_HOST) -> None:
        """Expose ``/metrics`` on ``host:port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
        log.info("run metrics on host=%s port=%d", host, port)


class MetricsProgress:
    """A progress sink that feeds :class:`RunMetrics` and forwards to ``inner``."""

    def __init__(
        self, inner: ProgressSink, metrics: RunMetrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._inner, self._m, self._clock = inner, metrics, clock
        self._t0 = clock()
        self._rows = 0

    def start(self, total: int, done: int) -> None:
        """The run begins."""
        self._t0 = self._clock()
        self._inner.start(total, done)

    def slice_done(self, rows: int) -> None:
        """One more slice committed."""
        self._rows += rows
        self._m.rows.labels(self._m.job_id).inc(rows)
        elapsed = max(self._clock() - self._t0, 1e-6)
        self._m.rate.labels(self._m.job_id).set(self._rows / elapsed)
        self._inner.slice_done(rows)

    def retry(self) -> None:
        """One more retry scheduled."""
        self._m.retries.labels(self._m.job_id).inc()
        self._inner.retry()

    def note(self, text: str) -> None:
        """Forwarded."""
        self._inner.note(text)

    def stop(self) -> None:
        """Forwarded."""
        self._inner.stop()


def store_readers(state_url: str, job_id: str) -> tuple[
    Callable[[], Mapping[str, int]], Callable[[], float]
]:
    """Slice counts by state and total pause seconds, each read from the store when called
    (zeros while the store does not exist yet)."""
    from coordinator.state.store import StateStore, state_exists

    def counts() -> Mapping[str, int]:
        if not state_exists(state_url):
            return {}
        out: dict[str, int] = {}
        try:
            with StateStore(state_url, create=False) as store:
                out = store.slice_counts(job_id)  # one aggregate query, not the plan
        except Exception as exc:  # a scrape must not fail the run (no cut yet, locked file)
            log.debug("job=%s: slice counts unavailable: %s", job_id, exc)
        return out

    def paused() -> float:
        if not state_exists(state_url):
            return 0.0
        try:
            with StateStore(state_url, create=False) as store:
                return float(sum(p.seconds for p in store.list_pauses(job_id)))
        except Exception as exc:  # as above
            log.debug("job=%s: pauses unavailable: %s", job_id, exc)
            return 0.0

    return counts, paused
