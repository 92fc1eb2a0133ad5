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
no-op. Slices run one after the other in this process (a reprocess is a bounded range).

Afterwards the job is reconciled with the NEW transform: the reprocess slices exactly, the
rest of the topic's history as unplanned ranges, live up to the table's committed offsets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from coordinator.core.errors import ConfigError, ExitCode, SeamlineError, StateError
from coordinator.core.jobspec import JobSpec, TransformSpec
from coordinator.core.values import Cut, Offset, OffsetRange, Scope, Slice, TimeBucket, utc
from coordinator.plan.planner import ArchiveFile, BucketUnit, floor_time, next_boundary, split_range

if TYPE_CHECKING:
    from coordinator.state.reprocess import ReprocessStore
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
    run_id: str, files: Sequence[ArchiveFile], start: datetime, end: datetime, unit: BucketUnit
) -> list[Slice]:
    """Buckets of ``unit`` clipped to ``[start, end)`` that some archive file overlaps."""
    start, end = utc(start), utc(end)
    out: list[Slice] = []
    lo = floor_time(start, unit)
    while lo < end:
        hi = next_boundary(lo, unit)
        bucket = TimeBucket(max(lo, start), min(hi, end))
        members = sorted(
            f.path for f in files if f.min_time < bucket.end and f.max_time >= bucket.start
        )
        if members:
            sid = f"r-{run_id}-a-{bucket.label()}"
            out.append(Slice(sid, Scope("archive", bucket=bucket), files=tuple(members)))
        lo = hi
    return out


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
            ms = int(utc(ts).timestamp() * 1000)
            tps = [TopicPartition(cut.topic, p.partition, ms) for p in cut.partitions]
            found = consumer.offsets_for_times(tps, timeout=timeout_s)
            out.append(
                {tp.partition: tp.offset if tp.offset >= 0 else cut.hwm(tp.partition) for tp in found}
            )  # fmt: skip
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
    from stream.decode.json_records import load_transform

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
        out += archive_reprocess_slices(run_id, scan_archives(job), start, end, archive_unit(job))
    if job.history.kafka:
        starts, ends = kafka_bounds(job, cut, start, end, timeout_s)
        out += kafka_reprocess_slices(run_id, cut, starts, ends, job.backfill.slice_records)
    return out


def _execute(job: JobSpec, store: ReprocessStore, cut: Cut, run_id: str, s: Slice) -> int:
    """Run one slice with retries on transient errors; returns its rows."""
    from backfill.executor import execute_slice
    from backfill.sinks.common import commit_guard
    from coordinator.core.values import CommitToken

    for tries in range(1, job.backfill.max_attempts + 1):
        store.check_epoch(job.job_id, cut.epoch)  # a newer cut makes this run stale
        attempt = store.start_attempt(run_id, s.slice_id)
        token = CommitToken(job.job_id, s.slice_id, attempt, cut.epoch, "backfill", s.scope.ranges)
        try:
            with commit_guard(lambda tok: store.check_epoch(tok.job_id, tok.epoch)):
                result = execute_slice(job, s, token)
        except SeamlineError as exc:
            store.finish_slice(run_id, s.slice_id, error=f"{type(exc).__name__}: {exc}")
            if not exc.transient or tries == job.backfill.max_attempts:
                raise
            time.sleep(min(30.0, 2.0 ** (tries - 1)))
            continue
        store.finish_slice(run_id, s.slice_id, rows=result.rows, token=token)
        return result.rows
    raise AssertionError("unreachable")


def reprocess(
    job: JobSpec,
    start: datetime,
    end: datetime,
    *,
    transform: str | None = None,
    timeout_s: float = 10.0,
) -> ReprocessOutcome:
    """Re-derive ``[start, end)`` with ``transform`` (default: the job's), then reconcile.

    Raises ``ConfigError`` for a bad range or transform, ``StateError`` without a stored cut.
    """
    from coordinator.run.orchestrate import live_bounded_source
    from coordinator.state.reprocess import ReprocessStore
    from reconcile.run import reconcile_job

    start, end = utc(start), utc(end)
    if end <= start:
        raise ConfigError(f"key=--to: expected --to after --from, found {start}..{end}")
    fixed = with_transform(job, transform)
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
        committed = skipped = rows = 0
        failed: list[str] = []
        for rec in store.run_slices(run_id):
            if rec.status == "committed":
                skipped += 1
                continue
            try:
                rows += _execute(fixed, store, cut, run_id, rec.slice)
                committed += 1
            except SeamlineError as exc:
                log.error("reprocess slice=%s failed: %s", rec.slice.slice_id, exc)
                failed.append(rec.slice.slice_id)
        report = None
        if not failed:
            report = reconcile_job(fixed, cut, plan, source=live_bounded_source(fixed, cut))
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
    "ReprocessOutcome",
    "archive_reprocess_slices",
    "kafka_bounds",
    "kafka_reprocess_slices",
    "parse_when",
    "plan_reprocess",
    "reprocess",
    "run_id_of",
    "with_transform",
]
