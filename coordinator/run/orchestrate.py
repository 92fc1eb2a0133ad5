"""Run a job end to end: cut (reused), plan (reused), slices under the lag gate, reconcile.

:func:`run_job` is what ``seamline run`` and ``seamline demo`` both run (through
``coordinator.service.run_job``, which supplies the lag gate and the reconciler). A run is
done only when every slice committed AND reconciliation passed (DESIGN §5): that is the only
outcome with ``ExitCode.OK``.

What a run reconciles while the live consumer keeps writing (``seamline live`` in another
process):

* **History** (every planned Kafka slice and archive bucket, and any history offset below the
  cut no slice covers) is compared exactly: source and table must match row for row.
* **Live** is compared only up to the live offsets committed *in the table* when the
  reconciliation starts (per partition; the cut's ``hwm`` where live has committed nothing).
  Records above that are still in flight, not lost, so they are left out: no false alarm, no
  timing guess. What the live side claims as written must be in the table exactly once, and
  nothing may sit at the seam twice (overlap) or be missing (gap).
* ``min_age_s`` can narrow the live range further (records younger than that are left out),
  as in ``seamline reconcile --min-age``.

A reconciliation that cannot run (e.g. the table does not exist because a test executor wrote
nothing) leaves the run NOT_RECONCILED with the reason in ``JobOutcome.reconcile_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator.core.errors import ConfigError, ExitCode
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Cut, OffsetRange
from coordinator.run.committer import BatchCommitter, BatchTable
from coordinator.run.pool import warm_up
from coordinator.run.prepare import check_source_retained, ensure_cut, ensure_plan_stored
from coordinator.run.progress import NullProgress, ProgressSink
from coordinator.run.publish import PublishResult
from coordinator.run.runner import Runner, RunnerConfig, RunReport, StopSignal
from coordinator.state.store import PauseRecord, StateStore

if TYPE_CHECKING:
    from reconcile.model import ReconcileReport
    from reconcile.run import UnitSource
    from reconcile.source import SourceUnit

log = logging.getLogger(__name__)

DEFAULT_EXECUTOR = "backfill.executor:execute_slice"


@dataclass(frozen=True)
class JobOutcome:
    """Everything one run did; ``exit_code`` is OK only when committed and reconciled."""

    cut: Cut
    plan_hash: str
    run: RunReport
    reconcile: ReconcileReport | None  # None: not reached (slices left) or could not run
    pauses: tuple[PauseRecord, ...]
    exit_code: ExitCode
    reconcile_error: str | None = None
    publish: PublishResult | None = None  # publish = "atomic" only

    @property
    def reconciled(self) -> bool:
        """Every slice committed and the reconciliation passed."""
        return self.exit_code == ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: the run's counts, pauses and the reconcile totals."""
        rec = self.reconcile
        return {
            "job_id": self.cut.job_id,
            "epoch": self.cut.epoch,
            "plan_hash": self.plan_hash,
            "total": self.run.total,
            "committed": self.run.committed,
            "failed": list(self.run.failed),
            "errors": dict(self.run.errors),
            "remaining": self.run.remaining,
            "not_selected": list(self.run.not_selected),
            "rows": self.run.rows,
            "retries": self.run.retries,
            "worker_deaths": self.run.worker_deaths,
            "cancelled": self.run.cancelled,
            "pauses": [pause_json(p) for p in self.pauses],
            "paused_s": sum(p.seconds for p in self.pauses),
            "reconciled": self.reconciled,
            "reconcile": None if rec is None else rec.totals(),
            "reconcile_error": self.reconcile_error,
            "publish": None if self.publish is None else self.publish.to_json(),
            "exit_code": int(self.exit_code),
        }


def pause_json(p: PauseRecord) -> dict[str, Any]:
    """Plain JSON of one lag pause."""
    return {"started_at": p.started_at.isoformat(), "seconds": p.seconds, "reason": p.reason}


@dataclass(frozen=True)
class LiveBoundedSource:
    """A reconcile source whose live range ends at the table's committed live offsets.

    ``bounds`` maps partition to the table's live offset; partitions without one end at the
    cut's ``hwm`` (the live side has claimed nothing there yet).
    """

    inner: UnitSource
    cut: Cut
    bounds: Mapping[int, int]

    def ends(self, partitions: Sequence[int]) -> dict[int, int]:
        """min(read-committed end, table's live offset), never below the cut."""
        ends = self.inner.ends(partitions)
        out: dict[int, int] = {}
        for p in partitions:
            hwm = int(self.cut.hwm(p))
            out[p] = max(hwm, min(ends.get(p, hwm), self.bounds.get(p, hwm)))
        return out

    def read(self, ranges: Sequence[OffsetRange]) -> SourceUnit:
        """The inner source's units, unchanged."""
        return self.inner.read(ranges)


def _final_code(report: RunReport, rec: ReconcileReport | None, atomic: bool) -> ExitCode:
    if atomic and report.failed and not report.cancelled:
        return ExitCode.NOT_RECONCILED  # a failed (e.g. asserted) slice blocks the publish
    if report.exit_code != ExitCode.OK:
        return report.exit_code
    return ExitCode.OK if rec is not None and rec.reconciled else ExitCode.NOT_RECONCILED


GateFactory = Callable[[Cut], Callable[[], float | None]]
Reconciler = Callable[[Cut], tuple["ReconcileReport | None", "str | None"]]
Publisher = Callable[[Cut], PublishResult]


def run_job(
    job: JobSpec,
    *,
    gate: GateFactory,
    reconcile: Reconciler,
    executor: str = DEFAULT_EXECUTOR,
    progress: ProgressSink | None = None,
    stop: StopSignal | None = None,
    timeout_s: float = 10.0,
    takeover: bool = False,
    only: Sequence[str] = (),
    limit: int | None = None,
    publish: Publisher | None = None,
    batch_table: Callable[[], BatchTable] | None = None,
) -> JobOutcome:
    """Cut, plan, run every slice not yet committed, then reconcile (see the module doc).

    ``only`` (slice-id globs) and ``limit`` make a partial run: a subset of the slices still
    to do, the stored plan unchanged; while any slice remains the run is PARTIAL (exit 5) and
    is not reconciled.

    ``gate(cut)`` is the runner's lag gate (``() -> seconds to pause | None``);
    ``reconcile(cut)`` returns the report, or ``(None, reason)`` when it could not run.
    ``publish(cut)`` (``publish = "atomic"`` jobs) audits and publishes the staged slices once
    every slice is staged (:mod:`coordinator.run.publish`); its audit is the run's
    reconciliation, and a blocked publish leaves the run NOT_RECONCILED with nothing visible.
    ``batch_table()`` (``committer = "coordinator"`` jobs) opens the table the coordinator's
    :class:`~coordinator.run.committer.BatchCommitter` commits staged slices to.
    ``coordinator.service.run_job`` supplies these for a job.
    Raises ``ConfigError``/``SourceDataLossError``/``StateError`` before any slice runs.
    """
    if job.backfill.executor == "process":
        warm_up()  # the worker pool's fork server imports while the cut and plan are made
    cut = ensure_plan_stored(job, ensure_cut(job, timeout_s=timeout_s))
    plan_hash = cut.plan_hash or ""  # stored by ensure_plan_stored
    config = RunnerConfig(
        executor=executor,
        concurrency=job.backfill.concurrency,
        max_attempts=job.backfill.max_attempts,
        takeover=takeover,
        only=tuple(only),
        limit=limit,
        pool=job.backfill.executor,
        ray_address=job.backfill.ray.address,
    )
    with StateStore(job.state_url()) as store:
        check_source_retained(job, store, cut, timeout_s)
        committer = None
        if job.backfill.committer == "coordinator":
            if batch_table is None:
                raise ConfigError(f'job={job.job_id}: committer = "coordinator" needs the table '
                                  "to commit batches to; none was given")  # fmt: skip
            committer = BatchCommitter(
                job.job_id, cut.epoch, store, batch_table(),
                max_slices=job.backfill.commit_batch_slices,
                max_wait_s=job.backfill.commit_batch_seconds,
            )  # fmt: skip
        runner = Runner(
            job, store, cut.epoch, config, lag_gate=gate(cut), progress=progress or NullProgress(),
            stop=stop, committer=committer,
        )  # fmt: skip
        done: list[PublishResult] = []
        then = (lambda: done.append(publish(cut))) if publish is not None else None
        report = runner.run(then)  # the publish runs under the runner's lease
    rec, error = None, None
    published = done[0] if done else None
    if publish is not None and published is None and report.failed and not report.cancelled:
        why = f"{len(report.failed)} slices failed; they block the publish"
        published = PublishResult("staged", None, report.committed, error=why)
    if done:  # the audit is the run's reconciliation
        rec, error = done[0].audit, done[0].error
    if report.exit_code == ExitCode.OK and (published is None or published.already_published):
        rec, error = reconcile(cut)
    with StateStore(job.state_url()) as store:
        pauses = tuple(store.list_pauses(job.job_id))
    code = _final_code(report, rec, publish is not None)
    log.info("job=%s run finished exit_code=%s", job.job_id, code.name)
    return JobOutcome(cut, plan_hash, report, rec, pauses, code, error, published)


__all__ = [
    "DEFAULT_EXECUTOR",
    "GateFactory",
    "JobOutcome",
    "LiveBoundedSource",
    "Publisher",
    "Reconciler",
    "run_job",
]
