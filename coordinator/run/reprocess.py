"""Incident reprocessing: re-derive an event-time range with a fixed transform, under live.

What a reprocess of ``[start, end)`` overwrites (and nothing else):

* **Topic part**: per partition, the offsets ``[a, b)`` where ``a`` is the first offset whose
  Kafka *record timestamp* is >= ``start`` and ``b`` the first whose timestamp is >= ``end``
  (``offsets_for_times``), both clamped to ``[log_start, hwm)`` of the job's cut. The Kafka
  record timestamp, not the payload's event time, bounds the range: the scope of an overwrite
  is offsets (DESIGN §2), timestamps are not monotonic, and records at or after the cut's
  ``hwm`` belong to the live side, which is never touched.
* **Archive part**: buckets of the job's archive unit clipped to ``[start, end)``, by event
  time, with the archive files that overlap them (archive rows only: live rows in those days
  survive, as in any archive overwrite).

Reprocess slices have their own ids (``r-<run>-k-p0-<a>-<b>``, ``r-<run>-a-<bucket>``) and
tokens, live in their own state tables (:mod:`coordinator.state.reprocess`; the original plan
stays immutable), and the run id is derived from (job, epoch, range, transform): running the
same reprocess again finds its committed slices (and their tokens in the table) and is a
no-op. Slices run through the job runner (:class:`~coordinator.run.runner.Runner`): the
same worker pool (one worker: slices run one after the other), retry policy and epoch check
before every commit as ``seamline run``.

Afterwards the job is reconciled with the NEW transform: the reprocess slices exactly, the
rest of the topic's history as unplanned ranges, live up to the table's committed offsets.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from coordinator.core.errors import ConfigError, ExitCode, StateError
from coordinator.core.faults import crash_point
from coordinator.core.jobspec import JobSpec, TransformSpec
from coordinator.core.values import (
    CommitToken,
    Cut,
    Epoch,
    Offset,
    OffsetRange,
    Scope,
    Slice,
    SliceKey,
    SliceStatus,
    TimeBucket,
    utc,
)
from coordinator.plan.planner import (
    ArchiveFile,
    BucketUnit,
    floor_time,
    key_groups,
    key_slice_id,
    next_boundary,
    split_range,
)

if TYPE_CHECKING:
    from coordinator.run.progress import ProgressSink
    from coordinator.run.runner import RunReport
    from coordinator.state.lease import LeaseOwner
    from coordinator.state.reprocess import ReprocessStore
    from coordinator.state.store import SliceRecord
    from reconcile.model import ReconcileReport

log = logging.getLogger(__name__)


def run_id_of(job_id: str, epoch: int, start: datetime, end: datetime, fn: str | None) -> str:
    """A short id derived from what the run does (same inputs, same id)."""
    doc = [job_id, epoch, utc(start).isoformat(), utc(end).isoformat(), fn or ""]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:10]


def kafka_reprocess_slices(
    run_id: str,
    cut: Cut,
    starts: Mapping[int, int],
    ends: Mapping[int, int],
    size: int,
) -> list[Slice]:
    """Slices over ``[starts[p], ends[p])`` clamped to each partition's ``[log_start, hwm)``.

    >>> from coordinator.core.values import PartitionCut, PartitionId, Epoch
    >>> from datetime import UTC
    >>> c = Cut("j", "t", (PartitionCut(PartitionId(0), Offset(2), Offset(10)),),
    ...         datetime(2024, 1, 1, tzinfo=UTC), Epoch(1))
    >>> [s.slice_id for s in kafka_reprocess_slices("x", c, {0: 0}, {0: 99}, 5)]
    ['r-x-k-p0-000000002-000000007', 'r-x-k-p0-000000007-000000010']
    """
    out: list[Slice] = []
    for p in cut.partitions:
        a = max(p.log_start, min(starts.get(p.partition, p.hwm), p.hwm))
        b = max(a, min(ends.get(p.partition, p.hwm), p.hwm))
        for r in split_range(OffsetRange(p.partition, Offset(a), Offset(b)), size):
            sid = f"r-{run_id}-k-p{r.partition}-{r.start:09d}-{r.end:09d}"
            out.append(Slice(sid, Scope("kafka", (r,)), est_rows=r.width))
    return out


def archive_reprocess_slices(
    run_id: str,
    files: Sequence[ArchiveFile],
    start: datetime,
    end: datetime,
    unit: BucketUnit,
    keys: Sequence[SliceKey | None] = (None,),
) -> list[Slice]:
    """Buckets of ``unit`` clipped to ``[start, end)`` that some archive file overlaps, one
    slice per custom key of the plan (``keys``: the job's ``slice_by`` groups)."""
    start, end = utc(start), utc(end)
    out: list[Slice] = []
    lo = floor_time(start, unit)
    while lo < end:
        hi = next_boundary(lo, unit)
        bucket = TimeBucket(max(lo, start), min(hi, end))
        for key in keys:
            members = sorted(
                f.path for f in files if f.min_time < bucket.end and f.max_time >= bucket.start
                and (key is None or f.keys is None or f.keys.intersection(key.values))
            )  # fmt: skip
            if members:
                sid = f"r-{run_id}-a-{bucket.label()}" + (f"-{key_slice_id(key)}" if key else "")
                scope = Scope("archive", bucket=bucket, key=key)
                out.append(Slice(sid, scope, files=tuple(members)))
        lo = hi
    return out


def epoch_ms(ts: datetime, key: str = "--from/--to") -> int:
    """``ts`` as Kafka timestamp milliseconds; ``ConfigError`` before 1970-01-01T00:00Z.

    Kafka reads the negative timestamps -2 and -1 as "earliest" and "latest": a time just
    before the epoch would silently select the whole history.
    """
    ms = int(utc(ts).timestamp() * 1000)
    if ms < 0:
        raise ConfigError(
            f"key={key}: expected a time at or after 1970-01-01T00:00:00Z, found "
            f"{utc(ts).isoformat()}",
            hint="pass an ISO date or datetime from 1970 on, e.g. --from 2024-03-28",
        )
    return ms


def time_bound(offset: int, hwm: int) -> int:
    """An ``offsets_for_times`` answer as a range bound: a negative offset (-1: no record at
    or after the time) means "none", i.e. the cut's ``hwm`` (the range end)."""
    return offset if offset >= 0 else hwm


def kafka_bounds(
    job: JobSpec, cut: Cut, start: datetime, end: datetime, timeout_s: float
) -> tuple[dict[int, int], dict[int, int]]:
    """First offsets whose record timestamp is >= ``start`` / >= ``end``, per partition.

    A partition with no such record gets the cut's ``hwm`` (nothing to take there).
    """
    from confluent_kafka import KafkaException, TopicPartition

    from coordinator.core.errors import SourceError
    from stream.kafka import client

    consumer = client.consumer(job.kafka_config(), group=f"seamline-reprocess-{job.job_id}")
    try:
        out: list[dict[int, int]] = []
        for ts in (start, end):
            ms = epoch_ms(ts)
            tps = [TopicPartition(cut.topic, p.partition, ms) for p in cut.partitions]
            found = consumer.offsets_for_times(tps, timeout=timeout_s)
            out.append({tp.partition: time_bound(tp.offset, cut.hwm(tp.partition)) for tp in found})
        return out[0], out[1]
    except KafkaException as exc:
        raise SourceError(
            f"topic={cut.topic}: offsets_for_times failed ({exc})",
            hint="check the broker is reachable and the topic exists",
        ) from None
    finally:
        consumer.close()


@dataclass(frozen=True)
class ReprocessOutcome:
    """What a reprocess did."""

    run_id: str
    start: datetime
    end: datetime
    transform: str | None
    slices: tuple[Slice, ...]
    committed: int
    skipped: int  # already committed by an earlier run of the same reprocess
    failed: tuple[str, ...]
    rows: int
    reconcile: ReconcileReport | None
    exit_code: ExitCode

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        rec = self.reconcile
        return {
            "run_id": self.run_id,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "transform": self.transform,
            "slices": [s.slice_id for s in self.slices],
            "committed": self.committed,
            "skipped": self.skipped,
            "failed": list(self.failed),
            "rows": self.rows,
            "reconciled": rec is not None and rec.reconciled,
            "reconcile": None if rec is None else rec.totals(),
            "exit_code": int(self.exit_code),
        }


def with_transform(job: JobSpec, fn: str | None) -> JobSpec:
    """``job`` with its transform replaced (``None``: keep the job's)."""
    if fn is None:
        return job
    from stream.decode.transform import load_transform

    spec = TransformSpec(function=fn)  # validates module:function
    load_transform(spec.function)
    return job.model_copy(update={"transform": spec})


def plan_reprocess(
    job: JobSpec, cut: Cut, run_id: str, start: datetime, end: datetime, timeout_s: float
) -> list[Slice]:
    """The reprocess slices: archive buckets first, then topic offset ranges."""
    from coordinator.plan.facts import archive_unit, scan_archives

    out: list[Slice] = []
    if job.history.archive:
        files, slice_by = scan_archives(job), job.slice_by()
        keys: list[SliceKey | None] = [None]
        if slice_by is not None:
            groups = key_groups(files, slice_by.groups())
            keys = [SliceKey(slice_by.column, g) for g in groups]
        out += archive_reprocess_slices(run_id, files, start, end, archive_unit(job), keys)
    if job.history.kafka:
        starts, ends = kafka_bounds(job, cut, start, end, timeout_s)
        out += kafka_reprocess_slices(run_id, cut, starts, ends, job.backfill.slice_records)
    return out


@dataclass(frozen=True)
class ReprocessLedger:
    """The runner's :class:`~coordinator.run.runner.SliceLedger` over one reprocess run's
    slices (their own tables; the job's plan is never touched)."""

    store: ReprocessStore
    run_id: str

    def list_slices(self, job_id: str, epoch: int | None = None) -> list[SliceRecord]:
        from coordinator.state.store import SliceRecord

        e = Epoch(epoch or 0)
        status: dict[str, SliceStatus] = {"committed": "committed", "failed": "failed"}
        return [
            SliceRecord(r.slice, e, status.get(r.status, "pending"), r.attempts, r.rows)
            for r in self.store.run_slices(self.run_id)
        ]

    def iter_slices(
        self,
        job_id: str,
        epoch: int | None = None,
        *,
        statuses: Sequence[SliceStatus] | None = None,
        page_size: int = 0,
    ) -> Iterator[SliceRecord]:
        """The run's slices (a reprocess run is one time range: read at once, not paged)."""
        return iter([r for r in self.list_slices(job_id, epoch)
                     if statuses is None or r.status in statuses])  # fmt: skip

    def slice_counts(self, job_id: str, epoch: int | None = None) -> dict[str, int]:
        """The run's slices per status."""
        out: dict[str, int] = {}
        for r in self.list_slices(job_id, epoch):
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def mark_running(self, job_id: str, slice_id: str, epoch: int) -> int:
        self.store.check_epoch(job_id, epoch)  # a newer cut makes this run stale
        return self.store.start_attempt(self.run_id, slice_id)

    def mark_failed(self, job_id: str, slice_id: str, epoch: int, error: str) -> None:
        self.store.finish_slice(self.run_id, slice_id, error=error)

    def mark_committed(
        self,
        job_id: str,
        slice_id: str,
        epoch: int,
        *,
        rows: int,
        token: CommitToken | None,
        quarantined: int = 0,
        snapshot_id: int | None = None,
    ) -> None:
        self.store.finish_slice(self.run_id, slice_id, rows=rows, token=token)
        crash_point("reprocess.between_slices")

    def mark_staged(
        self,
        job_id: str,
        slice_id: str,
        epoch: int,
        *,
        rows: int,
        token: CommitToken,
        staged: Mapping[str, Any],
        quarantined: int = 0,
    ) -> None:
        raise StateError(
            f"job={job_id} slice={slice_id}: reprocess commits every slice, expected no staged "
            "slice, found one (reprocess runs with publish = \"slice\")"
        )

    def record_pause(self, job_id: str, seconds: float, reason: str) -> None:
        self.store.record_pause(job_id, seconds, reason)

    def acquire_lease(
        self, job_id: str, owner: LeaseOwner, ttl_s: float, *, takeover: bool = False
    ) -> object:
        return self.store.acquire_lease(job_id, owner, ttl_s, takeover=takeover)

    def renew_lease(self, job_id: str, owner: LeaseOwner, ttl_s: float) -> bool:
        return self.store.renew_lease(job_id, owner, ttl_s)

    def release_lease(self, job_id: str, owner: LeaseOwner) -> bool:
        return self.store.release_lease(job_id, owner)


def _run_slices(
    job: JobSpec, store: ReprocessStore, cut: Cut, run_id: str, progress: ProgressSink | None
) -> RunReport:
    """Run the reprocess slices not yet committed through the job runner (same worker pool,
    same retry policy, same epoch check before every commit)."""
    from coordinator.run.orchestrate import DEFAULT_EXECUTOR
    from coordinator.run.runner import Runner, RunnerConfig

    # One slice at a time, as before the runner took over: a reprocess is a bounded range, and
    # parallel overwrites of one table only add commit conflicts with the live writer.
    config = RunnerConfig(DEFAULT_EXECUTOR, concurrency=1, max_attempts=job.backfill.max_attempts)
    return Runner(job, ReprocessLedger(store, run_id), cut.epoch, config, progress=progress).run()


def reprocess(
    job: JobSpec,
    start: datetime,
    end: datetime,
    *,
    transform: str | None = None,
    timeout_s: float = 10.0,
    reconcile: Callable[[JobSpec, Cut, Sequence[Slice]], ReconcileReport],
    progress: ProgressSink | None = None,
) -> ReprocessOutcome:
    """Re-derive ``[start, end)`` with ``transform`` (default: the job's), then reconcile.

    ``reconcile(job, cut, slices)`` compares source and table (``coordinator.service.
    reprocess`` gives the job's). Raises ``ConfigError`` for a bad range or transform,
    ``StateError`` without a stored cut.
    """
    from coordinator.state.reprocess import ReprocessStore

    start, end = utc(start), utc(end)
    epoch_ms(start, "--from")
    epoch_ms(end, "--to")
    if end <= start:
        raise ConfigError(f"key=--to: expected --to after --from, found {start}..{end}")
    fixed = with_transform(job, transform)
    if fixed.backfill.publish != "slice" or fixed.backfill.committer != "worker":
        # an incident fix lands slice by slice, not staged
        backfill = fixed.backfill.model_copy(update={"publish": "slice", "committer": "worker"})
        fixed = fixed.model_copy(update={"backfill": backfill})
    with ReprocessStore(job.state_url(), create=False) as store:
        cut = store.get_cut(job.job_id)
        if cut is None:
            raise StateError(
                f"job={job.job_id}: expected a stored cut, found none",
                hint="run `seamline run JOB` before reprocessing",
            )
        run_id = run_id_of(job.job_id, cut.epoch, start, end, fixed.transform.function)
        plan = plan_reprocess(fixed, cut, run_id, start, end, timeout_s)
        spec = {"from": start.isoformat(), "to": end.isoformat(),
                "transform": fixed.transform.function}  # fmt: skip
        store.save_run(run_id, job.job_id, cut.epoch, spec, plan)
        skipped = sum(r.status == "committed" for r in store.run_slices(run_id))
        ran = _run_slices(fixed, store, cut, run_id, progress)
        committed, rows = ran.committed - skipped, ran.rows
        failed = list(ran.failed)
        report = None
        if not failed:
            report = reconcile(fixed, cut, plan)
            store.finish_run(run_id, report.reconciled, report.to_json())
    code = ExitCode.PARTIAL if failed else (
        ExitCode.OK if report is not None and report.reconciled else ExitCode.NOT_RECONCILED
    )  # fmt: skip
    return ReprocessOutcome(
        run_id, start, end, fixed.transform.function, tuple(plan), committed, skipped,
        tuple(failed), rows, report, code,
    )  # fmt: skip


def parse_when(text: str) -> datetime:
    """An ISO date or datetime; naive values are UTC. ``ConfigError`` otherwise."""
    from datetime import UTC

    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"expected an ISO date or datetime (2024-03-28 or 2024-03-28T06:00Z), found {text!r}"
        ) from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


__all__ = [
    "ReprocessLedger",
    "ReprocessOutcome",
    "archive_reprocess_slices",
    "epoch_ms",
    "kafka_bounds",
    "kafka_reprocess_slices",
    "parse_when",
    "plan_reprocess",
    "reprocess",
    "run_id_of",
    "time_bound",
    "with_transform",
]
