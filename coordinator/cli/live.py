"""``seamline live JOB``: run the live consumer from the cut onwards, exactly once into the table.

Start offsets: the table's committed live offsets (read by the consumer itself on every
assignment), else the ``hwm`` of the job's cut from the state store. SIGTERM/SIGINT flush the
in-flight batch, commit it and exit 0. Progress (committed offset, high watermark, lag,
quarantined) is written to the state store's live progress, which ``seamline status`` shows.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import click

from coordinator.core.errors import ConfigError, LiveError
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.core.values import Offset, PartitionId

log = logging.getLogger(__name__)


def _cut_offsets(job: JobSpec) -> tuple[dict[PartitionId, Offset], int]:
    from coordinator.state.store import StateStore

    store = StateStore(job.state_url())
    try:
        cut = store.get_cut(job.job_id)
    finally:
        store.close()
    if cut is None:
        raise LiveError(
            f"job={job.job_id}: expected a stored cut, found none",
            hint="take the cut first (seamline plan JOB), then start the live consumer",
        )
    return {p.partition: p.hwm for p in cut.partitions}, int(cut.epoch)


def _parse_partitions(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        parts = tuple(sorted({int(p) for p in text.split(",") if p.strip()}))
    except ValueError:
        raise ConfigError(
            f"key=--partitions: expected comma-separated integers, found {text!r}"
        ) from None
    if not parts or min(parts) < 0:
        raise ConfigError(f"key=--partitions: expected partitions >= 0, found {text!r}")
    return parts


def _progress_writer(job: JobSpec, metrics: Any) -> Any:
    from coordinator.state.store import StateStore
    from stream.live.loop import LiveProgress

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


def _install_stop_handlers() -> threading.Event:
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: flushing and stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stop


def run_live(
    job: JobSpec,
    metrics_port: int | None,
    partitions: tuple[int, ...] | None,
    engine: str = "confluent",
    metrics_host: str = "127.0.0.1",
) -> dict[str, int]:
    """Run until SIGTERM/SIGINT; returns the final counters."""
    stop = _install_stop_handlers()
    from coordinator.service import open_live_sink
    from stream.decode.json_records import load_transform
    from stream.kafka.quarantine import QuarantineWriter, default_topic, ensure_topic
    from stream.live.core import BatchLimits
    from stream.live.loop import LiveConsumer, LiveSettings
    from stream.live.metrics import LiveMetrics

    start, epoch = _cut_offsets(job)
    conf = job.kafka_config()
    dlq = job.live.quarantine_topic or default_topic(job.stream.topic)
    ensure_topic(conf, dlq)
    metrics = LiveMetrics(job.job_id) if metrics_port is not None else None
    if metrics is not None and metrics_port is not None:
        metrics.serve(metrics_port, metrics_host)
    settings = LiveSettings(
        job_id=job.job_id,
        topic=job.stream.topic,
        group=job.stream.group or f"seamline-live-{job.job_id}",
        schema=job.schema_.arrow_schema(),
        limits=BatchLimits(
            job.live.batch_records, job.live.batch_seconds, job.live.min_commit_seconds
        ),
        epoch=epoch,
        partitions=partitions,
    )
    if engine == "faust" and stop.is_set():  # stopped while starting: nothing consumed yet
        return {}
    parts = (
        settings,
        conf,
        open_live_sink(job),
        load_transform(job.transform.function),
        start,
        QuarantineWriter(conf, dlq, job.stream.topic),
    )
    if engine == "faust":
        from stream.live.faust_engine import run_worker

        run_worker(*parts)
        return {}
    consumer = LiveConsumer(*parts, on_progress=_progress_writer(job, metrics), stop_event=stop)
    progress = consumer.run()
    return {
        "records": progress.records,
        "quarantined": progress.quarantined,
        "commits": progress.commits,
        "dropped_batches": progress.dropped_batches,
    }


@click.command("live")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus /metrics here.")
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address /metrics binds to (0.0.0.0 exposes it to the network).",
)
@click.option("--partitions", default=None, help="Explicit assignment, e.g. 0,2 (no group).")
@click.option(
    "--engine",
    type=click.Choice(["confluent", "faust"]),
    default="confluent",
    show_default=True,
    help="confluent-kafka consumer, or a Faust worker (group offsets set from the table).",
)
def live(
    job_file: str,
    metrics_port: int | None,
    metrics_host: str,
    partitions: str | None,
    engine: str,
) -> None:
    """Consume the job's topic from the cut onwards into the table, exactly once."""
    job = load_job(job_file)
    if engine == "faust" and partitions is not None:
        raise ConfigError("key=--partitions: the faust engine assigns through its group")
    counters = run_live(job, metrics_port, _parse_partitions(partitions), engine, metrics_host)
    click.echo(" ".join(f"{k}={v}" for k, v in counters.items()))


def register(group: click.Group) -> None:
    """Add ``live`` to the ``seamline`` group."""
    group.add_command(live)
