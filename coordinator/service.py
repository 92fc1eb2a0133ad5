"""The composition root: the one place that turns a ``JobSpec`` into adapters.

Table adapters come from the sink registry (:data:`backfill.sinks.SINKS`); every client gets
the narrow port it needs (:mod:`coordinator.core.ports`): the live consumer a ``LiveTable``,
the reconciler a ``TableReader``, the lag gate a ``LivePosition`` probe. The services here
(``run_job``, ``reprocess``, ``reconcile_and_record``, ``run_live``) wire those adapters into
the job-free code of :mod:`coordinator.run`, :mod:`reconcile` and :mod:`stream.live`; the CLI
modules parse, call one of them and render.

Live appends are conditional on the table's live offsets (:mod:`backfill.sinks.iceberg.live`,
:mod:`backfill.sinks.lance.live`), and the table's ``maintain()`` runs every
``live.expire_snapshots_every`` commits keeping ``live.keep_snapshots`` versions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from backfill.sinks import open_catalog as _open_catalog
from backfill.sinks import open_sink
from coordinator.core.errors import ConfigError, LiveError, SeamlineError, StateError, WriterError
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import LiveTable, TableReader, TableSink
from coordinator.core.values import Cut, Offset, PartitionId, Slice
from coordinator.run import orchestrate
from coordinator.run.lag_gate import LagGate, LagMetric, MeasureLag
from coordinator.run.orchestrate import DEFAULT_EXECUTOR, JobOutcome, LiveBoundedSource
from coordinator.run.progress import ProgressSink
from coordinator.run.runner import StopSignal

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from coordinator.run.committer import BatchTable
    from coordinator.run.publish import PublishResult
    from coordinator.run.reprocess import ReprocessOutcome
    from coordinator.state.slices import SliceRecord
    from coordinator.state.store import StateStore
    from reconcile.charts import RunFacts
    from reconcile.model import ReconcileReport
    from reconcile.run import ReconcileProgress, UnitSource
    from stream.live.loop import LiveProgress, LiveSettings

log = logging.getLogger(__name__)


# -- tables ----------------------------------------------------------------------------------


def open_table(job: JobSpec, *, min_age_s: float = 60.0) -> TableSink:
    """``job``'s table through the sink registry (not created here).

    ``min_age_s``: snapshots/versions younger than this are never removed by maintenance.
    """
    return open_sink(job, min_age_s=min_age_s)


def open_catalog(job: JobSpec) -> Catalog:
    """The job's Iceberg catalog, any pyiceberg type (Iceberg jobs only)."""
    if job.table.identifier is None:
        raise ConfigError("key=table.identifier: iceberg needs 'identifier' and a catalog")
    return _open_catalog(job)


def open_live_sink(job: JobSpec, *, min_snapshot_age_s: float = 60.0) -> LiveTable:
    """The live table of ``job``, created first if missing, with what live appends need
    (Iceberg: the manifest-merge and metadata-cleanup properties)."""
    table = open_table(job, min_age_s=min_snapshot_age_s)
    table.ensure_live()
    return table


def open_reader(job: JobSpec) -> TableReader:
    """``job``'s table as the reconciler reads it."""
    return open_table(job)


def maintain_table(job: JobSpec, *, min_age_s: float = 60.0) -> dict[str, int]:
    """One maintenance pass over ``job``'s table (``seamline maintain``): compact small files
    (Iceberg: per partition, conditional on the snapshot read; Lance: ``compact_files``), then
    expire snapshots / remove versions older than ``min_age_s`` beyond ``live.keep_snapshots``.
    Safe beside a running live consumer and backfill. Returns the counts."""
    from backfill.sinks.common import MaintainableTable

    table = open_table(job, min_age_s=min_age_s)
    if not isinstance(table, MaintainableTable):
        raise ConfigError(
            f"job={job.job_id}: expected a table format with maintenance (iceberg, lance), "
            f"found {job.table.format}"
        )
    try:
        report = table.maintain_table()
    except SeamlineError:
        raise
    except Exception as exc:  # a missing table, catalog errors: say which job and table
        raise WriterError(
            f"job={job.job_id} table={job.table.identifier or job.table.uri}: maintenance "
            f"failed ({type(exc).__name__}: {exc})",
            hint="check the table exists (seamline run or live creates it) and is reachable",
        ) from exc
    log.info("job=%s maintenance: %s", job.job_id, report.as_dict())
    return report.as_dict()


# -- lag gate --------------------------------------------------------------------------------


def lag_probe(
    job: JobSpec, start_offsets: Mapping[PartitionId, Offset] | None, timeout_s: float = 10.0
) -> MeasureLag:
    """Measure ``job``'s live lag from the broker's watermarks and the table's live offsets."""

    def measure() -> Mapping[int, int]:
        from stream.live.lag import live_lag

        table = open_table(job)
        # Before the first slice or live commit the table may not exist yet: that is "live
        # wrote nothing" (lag from the cut's hwm), not a failed measurement that lets slices go.
        table.ensure_table()
        return live_lag(
            job.kafka_config(), job.stream.topic, table, start_offsets, timeout_s=timeout_s
        )

    return measure


def make_lag_gate(
    job: JobSpec,
    *,
    start_offsets: Mapping[PartitionId, Offset] | None = None,
    threshold: int | None = None,
    pause_s: float = 1.0,
    metric: LagMetric = "total",
    min_interval_s: float = 0.5,
    max_wait_s: float | None = 600.0,
    timeout_s: float = 10.0,
) -> LagGate:
    """The job's :class:`LagGate`, measuring through :func:`lag_probe`."""
    return LagGate(
        job, threshold, pause_s, metric=metric, measure=lag_probe(job, start_offsets, timeout_s),
        min_interval_s=min_interval_s, max_wait_s=max_wait_s,
    )  # fmt: skip


def _hwms(cut: Cut) -> dict[PartitionId, Offset]:
    return {p.partition: p.hwm for p in cut.partitions}


# -- reconciliation --------------------------------------------------------------------------


def live_bounded_source(job: JobSpec, cut: Cut) -> LiveBoundedSource:
    """The job's Kafka source bounded by the live offsets committed in the table now."""
    from reconcile.source import KafkaUnits

    bounds = {int(p): int(o) for p, o in open_table(job).live_offsets().items()}
    log.info("job=%s reconciling live up to the table's offsets %s", job.job_id, bounds)
    return LiveBoundedSource(KafkaUnits(job), cut, bounds)


def reconcile(
    job: JobSpec,
    cut: Cut,
    slices: Sequence[Slice],
    *,
    min_age_s: float = 0.0,
    quarantine: Mapping[int, Iterable[int]] | None = None,
    source: UnitSource | None = None,
    now: datetime | None = None,
    on_progress: ReconcileProgress | None = None,
    sink: TableReader | None = None,
) -> ReconcileReport:
    """:func:`reconcile.run.reconcile_job` over the job's table (or ``sink``), Kafka topic
    and archive."""
    from backfill.sources.archive import read_archive
    from reconcile.run import reconcile_job
    from reconcile.source import KafkaUnits

    return reconcile_job(
        job, cut, slices, min_age_s=min_age_s, quarantine=quarantine,
        sink=sink if sink is not None else open_reader(job),
        source=source if source is not None else KafkaUnits(job),
        archive=lambda s: read_archive(job, s).counted(), now=now, on_progress=on_progress,
    )  # fmt: skip


def _load_plan(job: JobSpec) -> tuple[StateStore, list[SliceRecord], Cut, int]:
    from coordinator.state.store import StateStore

    store = StateStore(job.state_url(), create=False)
    epoch = store.current_epoch(job.job_id)
    cut = store.get_cut(job.job_id, epoch)
    if cut is None:
        store.close()
        raise StateError(
            f"job_id={job.job_id} epoch={epoch}: expected a stored cut, found none",
            hint="run the backfill (which takes the cut) before reconciling",
        )
    return store, store.list_slices(job.job_id, epoch), cut, epoch


def _record(
    store: StateStore, job: JobSpec, epoch: int, records: list[SliceRecord], report: ReconcileReport
) -> None:
    by_id = {s.slice_id: s for s in report.slices}
    for rec in records:
        if rec.status == "committed":
            store.mark_reconciled(
                job.job_id, rec.slice_id, epoch, checksum=by_id[rec.slice_id].table.to_json()
            )
    store.record_reconcile(job.job_id, report.to_json(), True)


def reconcile_and_record(
    job: JobSpec,
    *,
    min_age_s: float = 0.0,
    source: UnitSource | None = None,
    on_progress: ReconcileProgress | None = None,
) -> ReconcileReport:
    """Reconcile the job's stored plan; on a pass, record the result and mark the slices.

    The one entry point ``seamline reconcile`` and ``seamline run`` share. ``source``
    replaces the Kafka side (e.g. bounded to the table's committed live offsets). Raises
    ``StateError`` without a stored cut.
    """
    store, records, cut, epoch = _load_plan(job)
    with store:
        slices = [r.slice for r in records]
        report = reconcile(
            job, cut, slices, min_age_s=min_age_s, source=source, on_progress=on_progress
        )
        if report.reconciled:
            _record(store, job, epoch, records, report)
    return report


def reconcile_run(
    job: JobSpec, cut: Cut, *, min_age_s: float = 0.0
) -> tuple[ReconcileReport | None, str | None]:
    """Reconcile after a run (history exact, live up to the table's offsets); records on pass.

    Returns the report, or ``(None, reason)`` when the comparison could not run.
    """
    try:
        source = live_bounded_source(job, cut)
        return reconcile_and_record(job, min_age_s=min_age_s, source=source), None
    except SeamlineError as exc:
        log.warning("job=%s reconciliation could not run: %s", job.job_id, exc)
        return None, str(exc)
    except Exception as exc:  # the table may not exist yet (nothing written), catalog errors
        log.warning("job=%s reconciliation could not run: %r", job.job_id, exc)
        return None, f"{type(exc).__name__}: {exc}"


def report_facts(
    job: JobSpec, lag: Sequence[tuple[datetime, int]] = ()
) -> RunFacts:
    """The run's recorded facts for the HTML report: slice timings, lag pauses, cut time.

    ``lag`` adds live-lag samples a caller took (the state store keeps only the latest lag).
    """
    from reconcile.charts import Pause, RunFacts, SliceRun

    store, records, cut, _epoch = _load_plan(job)
    with store:
        pauses = store.list_pauses(job.job_id)
    runs = tuple(
        SliceRun(r.slice_id, "history" if r.slice.scope.source == "kafka" else "archive",
                 r.started_at, r.finished_at, max(r.attempts, 1), r.rows or 0)
        for r in records
        if r.started_at is not None and r.finished_at is not None
        and r.finished_at >= r.started_at
    )
    return RunFacts(
        slices=runs, pauses=tuple(Pause(p.started_at, p.seconds) for p in pauses),
        lag=tuple(lag), cut_taken_at=cut.taken_at,
    )  # fmt: skip


# -- run and reprocess -----------------------------------------------------------------------


def run_job(
    job: JobSpec,
    *,
    executor: str = DEFAULT_EXECUTOR,
    progress: ProgressSink | None = None,
    stop: StopSignal | None = None,
    lag_gate: Callable[[], float | None] | None = None,
    min_age_s: float = 0.0,
    timeout_s: float = 10.0,
    takeover: bool = False,
    only: Sequence[str] = (),
    limit: int | None = None,
) -> JobOutcome:
    """:func:`coordinator.run.orchestrate.run_job` with the job's lag gate and reconciler.

    ``lag_gate=None`` uses the job's :class:`LagGate` (threshold ``backfill.lag_threshold``,
    lag counted from the cut's ``hwm``); pass ``lambda: None`` to run without a gate.
    """

    def gate_for(cut: Cut) -> Callable[[], float | None]:
        if lag_gate is not None:
            return lag_gate
        return make_lag_gate(job, start_offsets=_hwms(cut))

    atomic = job.backfill.publish == "atomic"
    return orchestrate.run_job(
        job, gate=gate_for, reconcile=lambda cut: reconcile_run(job, cut, min_age_s=min_age_s),
        executor=executor, progress=progress, stop=stop, timeout_s=timeout_s, takeover=takeover,
        only=only, limit=limit,
        publish=(lambda cut: publish_run(job, cut, min_age_s=min_age_s)) if atomic else None,
        batch_table=lambda: _batch_table(job),
    )  # fmt: skip


def _batch_table(job: JobSpec) -> BatchTable:
    """The table the coordinator's batch committer commits staged slices to."""
    table = open_table(job)
    table.ensure_table()
    return cast("BatchTable", table)


def publish_run(job: JobSpec, cut: Cut, *, min_age_s: float = 0.0) -> PublishResult:
    """Audit the staged slices of ``job`` (the reconciler over the table as the publish will
    leave it) and publish them in one commit (:func:`coordinator.run.publish.publish_staged`);
    on a pass the audit is recorded like a run's reconciliation."""
    from backfill.sinks.staged import StagedView, StagingTable
    from coordinator.run.publish import publish_staged
    from coordinator.state.store import StateStore

    table = cast(StagingTable, open_table(job))
    table.ensure_table()

    def audit(records: Sequence[SliceRecord]) -> tuple[ReconcileReport | None, str | None]:
        staged = [r for r in records if r.status == "staged"]
        view = StagedView(
            table, [dict(r.staged or {}) for r in staged], [r.slice.scope for r in staged],
            job.schema_.event_time,
        )  # fmt: skip
        try:
            report = reconcile(
                job, cut, [r.slice for r in records], min_age_s=min_age_s,
                source=live_bounded_source(job, cut), sink=view,
            )  # fmt: skip
        except SeamlineError as exc:
            return None, f"the staged history could not be audited: {exc}"
        return report, None

    with StateStore(job.state_url()) as store:
        result = publish_staged(job.job_id, cut.epoch, store, table, audit)
        if result.state == "published" and result.audit is not None:
            _record(store, job, cut.epoch, store.list_slices(job.job_id, cut.epoch), result.audit)
    return result


def reprocess(
    job: JobSpec,
    start: datetime,
    end: datetime,
    *,
    transform: str | None = None,
    timeout_s: float = 10.0,
    progress: ProgressSink | None = None,
) -> ReprocessOutcome:
    """:func:`coordinator.run.reprocess.reprocess`, reconciled against the job's table."""
    from coordinator.run.reprocess import reprocess as run_reprocess

    def check(fixed: JobSpec, cut: Cut, plan: Sequence[Slice]) -> ReconcileReport:
        return reconcile(fixed, cut, plan, source=live_bounded_source(fixed, cut))

    return run_reprocess(
        job, start, end, transform=transform, timeout_s=timeout_s, reconcile=check,
        progress=progress,
    )  # fmt: skip


# -- live ------------------------------------------------------------------------------------


def cut_offsets(job: JobSpec) -> tuple[dict[PartitionId, Offset], int]:
    """The stored cut's ``hwm`` per partition and its epoch, read without creating a state
    store (``LiveError`` without a cut)."""
    from coordinator.run.prepare import stored_cut

    cut = stored_cut(job)
    if cut is None:
        raise LiveError(
            f"job={job.job_id}: expected a stored cut, found none",
            hint="take the cut first (seamline plan JOB), then start the live consumer",
        )
    return _hwms(cut), int(cut.epoch)


def _progress_writer(job: JobSpec, metrics: Any) -> Callable[[LiveProgress], None]:
    from coordinator.state.store import StateStore

    store = StateStore(job.state_url())

    def write(p: LiveProgress) -> None:
        for part, committed in p.committed.items():
            high = p.high.get(part, committed)
            store.record_live_progress(
                job.job_id,
                part,
                committed,
                max(high, committed),
                quarantined=p.quarantined_by_partition.get(part, 0),
            )
        if metrics is not None:
            metrics.update(p)

    return write


def _live_settings(job: JobSpec, epoch: int, partitions: tuple[int, ...] | None) -> LiveSettings:
    from stream.decode import decoder_for
    from stream.live.core import BatchLimits
    from stream.live.loop import LiveSettings

    live = job.live
    return LiveSettings(
        job_id=job.job_id, topic=job.stream.topic,
        group=job.stream.group or f"seamline-live-{job.job_id}",
        schema=job.schema_.arrow_schema(),
        limits=BatchLimits(live.batch_records, live.batch_seconds, live.min_commit_seconds,
                           max_commit_share=live.max_commit_share),
        epoch=epoch, partitions=partitions,
        decoder=decoder_for(job.stream.format, job),
    )  # fmt: skip


def run_live(
    job: JobSpec,
    stop: threading.Event,
    *,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    partitions: tuple[int, ...] | None = None,
    engine: str = "confluent",
) -> dict[str, int]:
    """Run the live consumer of ``job`` until ``stop`` is set; returns the final counters."""
    from stream.decode.transform import load_transform
    from stream.kafka.quarantine import QuarantineWriter, default_topic, ensure_topic
    from stream.live.loop import LiveConsumer
    from stream.live.metrics import LiveMetrics

    start, epoch = cut_offsets(job)
    conf = job.kafka_config()
    dlq = job.live.quarantine_topic or default_topic(job.stream.topic)
    ensure_topic(conf, dlq)
    metrics = LiveMetrics(job.job_id) if metrics_port is not None else None
    if metrics is not None and metrics_port is not None:
        metrics.serve(metrics_port, metrics_host)
    settings = _live_settings(job, epoch, partitions)
    if engine == "faust" and stop.is_set():  # stopped while starting: nothing consumed yet
        return {}
    table = open_live_sink(job)
    transform = load_transform(job.transform.function)
    parts = (settings, conf, table, transform, start, QuarantineWriter(conf, dlq, job.stream.topic))
    if engine == "faust":
        from stream.live.faust_engine import run_worker

        run_worker(*parts)
        return {}
    consumer = LiveConsumer(
        *parts,
        on_progress=_progress_writer(job, metrics),
        stop_event=stop,
        floor=lambda: cut_offsets(job)[0],  # the current cut's hwm, re-read on every assignment
    )
    progress = consumer.run()
    return {
        "records": progress.records,
        "quarantined": progress.quarantined,
        "commits": progress.commits,
        "dropped_batches": progress.dropped_batches,
    }


__all__ = [
    "DEFAULT_EXECUTOR",
    "cut_offsets",
    "lag_probe",
    "live_bounded_source",
    "maintain_table",
    "make_lag_gate",
    "open_catalog",
    "open_live_sink",
    "open_reader",
    "open_table",
    "reconcile",
    "reconcile_and_record",
    "reconcile_run",
    "reprocess",
    "run_job",
    "run_live",
]
