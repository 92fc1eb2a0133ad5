"""The lag gate: pause the backfill while the live consumer lags (live traffic comes first).

A :class:`LagGate` is the runner's ``lag_gate`` callable (``() -> seconds to pause | None``).
It is given its ``measure`` probe (``coordinator.service.lag_probe`` builds the job's): lag
per partition is the topic's high watermark minus the live offset committed *in the table*
(the table is the source of truth, :func:`stream.live.lag.live_lag`); a partition the live
consumer has not written yet counts from the cut's ``hwm``. The gate pauses when the total
(``metric="total"``) or the largest per-partition (``metric="max"``) lag exceeds the
threshold, ``job.backfill.lag_threshold`` unless given.

Decisions:

* Measuring costs a broker round trip and a table metadata read, so one measurement is reused
  for ``min_interval_s`` seconds (the runner asks before every submission).
* The job's probe creates a table that does not exist yet (empty, as the first slice or live
  commit would) so that lag counts from the cut's ``hwm`` instead of failing the measurement.
* A failed measurement does not stop the backfill: it is logged and the gate says "go"
  (monitoring trouble must not stall a run forever).
* ``max_wait_s`` bounds the total pause of one gate: a live consumer that is not running at
  all would otherwise stall the backfill for ever. Past it the gate logs a warning and lets
  slices run (set ``None`` to wait without bound).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Literal

from coordinator.core.jobspec import JobSpec

log = logging.getLogger(__name__)

LagMetric = Literal["total", "max"]
MeasureLag = Callable[[], Mapping[int, int]]


def lag_value(lags: Mapping[int, int], metric: LagMetric) -> int:
    """Total or largest lag over partitions (0 when there are none).

    >>> lag_value({0: 3, 1: 5}, "total"), lag_value({0: 3, 1: 5}, "max")
    (8, 5)
    """
    values = [max(0, v) for v in lags.values()]
    if not values:
        return 0
    return sum(values) if metric == "total" else max(values)


def pause_for(
    lags: Mapping[int, int], threshold: int, pause_s: float, metric: LagMetric = "total"
) -> float | None:
    """``pause_s`` when the lag is above ``threshold``, else ``None`` (go).

    >>> pause_for({0: 10}, 5, 1.0), pause_for({0: 5}, 5, 1.0)
    (1.0, None)
    """
    return pause_s if lag_value(lags, metric) > threshold else None


class LagGate:
    """Callable gate for :class:`coordinator.run.runner.Runner` (see the module docstring)."""

    def __init__(
        self,
        job: JobSpec,
        threshold: int | None = None,
        pause_s: float = 1.0,
        *,
        metric: LagMetric = "total",
        measure: MeasureLag,
        min_interval_s: float = 0.5,
        max_wait_s: float | None = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if pause_s <= 0:
            raise ValueError(f"expected pause_s > 0, found {pause_s}")
        self.job_id = job.job_id
        self.threshold = job.backfill.lag_threshold if threshold is None else threshold
        self.pause_s = pause_s
        self.metric: LagMetric = metric
        self._measure = measure
        self.min_interval_s = min_interval_s
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._measured_at: float | None = None
        self.last_lag: Mapping[int, int] = {}
        self.max_seen = 0
        self.paused_s = 0.0

    def _lags(self) -> Mapping[int, int]:
        now = self._clock()
        if self._measured_at is not None and now - self._measured_at < self.min_interval_s:
            return self.last_lag
        try:
            self.last_lag = dict(self._measure())
        except Exception as exc:  # advisory: Kafka, catalog or table errors never stop a run
            log.warning("job=%s live lag not measured (%s); not pausing", self.job_id, exc)
            self.last_lag = {}
        self._measured_at = now
        self.max_seen = max(self.max_seen, lag_value(self.last_lag, "max"))
        return self.last_lag

    def __call__(self) -> float | None:
        """Seconds to pause before the next slice, or ``None`` to go on."""
        pause = pause_for(self._lags(), self.threshold, self.pause_s, self.metric)
        if pause is None:
            return None
        if self.max_wait_s is not None and self.paused_s >= self.max_wait_s:
            log.warning(
                "job=%s live lag %d still above threshold=%d after %.0fs of pauses; going on",
                self.job_id,
                lag_value(self.last_lag, self.metric),
                self.threshold,
                self.paused_s,
            )
            return None
        self.paused_s += pause
        self._measured_at = None  # measure afresh after the pause
        return pause
