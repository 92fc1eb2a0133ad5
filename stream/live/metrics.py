"""Prometheus metrics of the live consumer (``seamline live --metrics-port``)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from stream.live.loop import LiveProgress

log = logging.getLogger(__name__)

#: Metrics bind to loopback unless ``--metrics-host`` says otherwise.
DEFAULT_HOST = "127.0.0.1"


class LiveMetrics:
    """Per-partition gauges and counters, fed from :class:`LiveProgress` snapshots."""

    def __init__(self, job_id: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._job = job_id
        labels = ["job", "partition"]
        r = self.registry
        self.lag = Gauge(
            "seamline_live_lag", "High watermark minus table offset", labels, registry=r
        )
        self.committed = Gauge(
            "seamline_live_committed_offset", "Next offset the table holds", labels, registry=r
        )
        self.records = Counter("seamline_live_records", "Rows committed", ["job"], registry=r)
        self.quarantined = Counter(
            "seamline_live_quarantined", "Records sent to quarantine", ["job"], registry=r
        )
        self.commits = Counter("seamline_live_commits", "Table commits", ["job"], registry=r)
        self.dropped = Counter(
            "seamline_live_dropped_batches", "Stale batches dropped", ["job"], registry=r
        )
        self._seen = LiveProgress()

    def serve(self, port: int, host: str = DEFAULT_HOST) -> None:
        """Expose ``/metrics`` on ``host:port`` (a daemon thread); loopback unless told."""
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on host=%s port=%d", host, port)

    def update(self, p: LiveProgress) -> None:
        """Set gauges and advance counters by what changed since the last update."""
        for part, lag in p.lag.items():
            self.lag.labels(self._job, str(part)).set(lag)
        for part, off in p.committed.items():
            self.committed.labels(self._job, str(part)).set(off)
        s = self._seen
        self.records.labels(self._job).inc(max(0, p.records - s.records))
        self.quarantined.labels(self._job).inc(max(0, p.quarantined - s.quarantined))
        self.commits.labels(self._job).inc(max(0, p.commits - s.commits))
        self.dropped.labels(self._job).inc(max(0, p.dropped_batches - s.dropped_batches))
        self._seen = LiveProgress(
            records=p.records,
            quarantined=p.quarantined,
            commits=p.commits,
            dropped_batches=p.dropped_batches,
        )
