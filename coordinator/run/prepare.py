"""Preparing a run: validate up front, take (or reuse) the cut, build (or reuse) the plan.

Order matters for "nothing is written on a bad job": the job file, the transform, the archive
settings and the broker/topic are all checked *before* the state store is created. ``cut`` and
``plan --dry-run`` never import the transform (user code): only commands that apply it do. A stored
cut and plan are always reused (DESIGN §6: retries and resumes never re-plan against "now").
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain

from coordinator.core.errors import ConfigError, StateError
from coordinator.core.faults import crash_point
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Cut, Epoch, KeyValue, Offset, PartitionId, SliceStatus
from coordinator.plan.cut import CutReading, floor_at_live, read_cut, read_log_starts
from coordinator.plan.facts import archive_unit, count_kafka_slices, scan_archives
from coordinator.plan.planner import (
    ArchiveFile,
    BucketUnit,
    Plan,
    check_retention,
    make_plan,
    with_estimates,
)
from coordinator.state.store import StateStore, state_exists
from stream.decode.transform import load_transform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanView:
    """A plan as shown to the user: stored (the truth) or freshly computed."""

    plan: Plan
    stored: bool
    exact: bool  # row estimates of Kafka slices are exact counts


def validate_job(job: JobSpec, *, transform: bool = True) -> None:
    """Checks that need no broker: archive settings agree and the transform imports.

    Importing the transform runs user code: with ``transform=False`` (``cut``, ``plan
    --dry-run``) only its top-level module is looked up on the path, nothing is executed.
    """
    if transform:
        load_transform(job.transform.function)
    else:
        find_transform(job.transform.function)
    archive_unit(job)


def find_transform(ref: str | None) -> None:
    """``ConfigError`` unless the top-level module of ``ref`` is on the path (runs no code)."""
    if ref is None:
        return
    module_name = ref.partition(":")[0]
    top = module_name.split(".")[0]
    if top not in sys.modules and importlib.util.find_spec(top) is None:
        raise ConfigError(
            f"key=transform.function: cannot import module {module_name!r} "
            f"(expected module {top!r} on the path, found none)",
            hint="check the module is on PYTHONPATH or installed in the environment",
        )


def open_existing(job: JobSpec) -> StateStore | None:
    """The job's state store if it exists (never creates one)."""
    url = job.state_url()
    return StateStore(url, create=False) if state_exists(url) else None


def stored_cut(job: JobSpec) -> Cut | None:
    """The cut stored for the job's current epoch, read without creating anything."""
    store = open_existing(job)
    if store is None:
        return None
    with store:
        return store.get_cut(job.job_id)


@dataclass(frozen=True)
class TableFacts:
    """What the job's table already holds: live offsets and how many of the job's commits."""

    live_offsets: Mapping[PartitionId, Offset]
    job_commits: int

    @property
    def holds_job(self) -> bool:
        """Whether the table was written by this job already."""
        return bool(self.live_offsets) or self.job_commits > 0


def table_facts(job: JobSpec) -> TableFacts:
    """The table's live offsets and the job's commit tokens in it (nothing if no table)."""
    from pyiceberg.exceptions import NoSuchTableError

    from coordinator.service import open_table  # the composition root opens every table

    sink = open_table(job)
    try:
        live = sink.live_offsets()
    except (NoSuchTableError, OSError, ValueError) as exc:  # no table (or dataset) yet
        log.debug("job=%s: no table to read live offsets from (%s)", job.job_id, exc)
        return TableFacts({}, 0)
    if live:
        return TableFacts(live, 0)
    commits = getattr(sink, "commits", None)
    found = commits() if commits is not None else []
    return TableFacts({}, sum(1 for c in found if c.token.job_id == job.job_id))


def _refuse_fresh_store(job: JobSpec, facts: TableFacts) -> None:
    from coordinator.state.base import safe_url

    offsets = {int(p): int(o) for p, o in facts.live_offsets.items()}
    raise StateError(
        f"job={job.job_id}: expected a fresh table for a fresh state store "
        f"url={safe_url(job.state_url())}, found a table already written by this job "
        f"(live offsets {offsets}, commits={facts.job_commits})",
        hint="point [state] url at the store that ran this job (a relative sqlite path is "
        "relative to the job file), or adopt the table with `seamline cut JOB --adopt` (the "
        "cut starts at the table's live offsets), or delete the table to start over",
    )


def refuse_unowned_history(job: JobSpec, reading: CutReading) -> None:
    """``history.kafka = false`` needs an empty topic below the cut (``ConfigError``).

    Without Kafka history nobody would own ``[log_start, hwm)``: every retained record would
    be reported lost and the job could never reconcile.
    """
    held = [p for p in reading.partitions if p.hwm > p.log_start]
    if job.history.kafka or not held:
        return
    ranges = " ".join(f"partition={p.partition} offsets=[{p.log_start},{p.hwm})" for p in held)
    raise ConfigError(
        f"job={job.job_id} topic={job.stream.topic}: history.kafka=false expects a topic with "
        f"no retained records below the cut, found {ranges}",
        hint="set history.kafka = true to backfill them (the default), or point the job at "
        "an empty topic; nothing was written",
    )


def ensure_cut(
    job: JobSpec,
    *,
    new_cut: bool = False,
    adopt: bool = False,
    timeout_s: float = 10.0,
    transform: bool = True,
) -> Cut:
    """The job's cut: the stored one, or a new one read from the broker and stored first.

    ``new_cut`` bumps the epoch (every older coordinator becomes stale) and takes a new cut.
    A cut that is taken never has ``hwm`` below the table's live offsets. A first cut is
    refused (``StateError``) when the table already holds this job's commits (a lost or
    misplaced state store), unless ``adopt``. ``transform=False`` (``seamline cut``) does not
    import the user's transform.
    """
    validate_job(job, transform=transform)
    existing = stored_cut(job)
    if existing is not None and not new_cut:
        return existing
    facts = table_facts(job)
    if existing is None and facts.holds_job and not adopt:
        _refuse_fresh_store(job, facts)
    reading = read_cut(job, timeout_s)
    refuse_unowned_history(job, reading)
    reading = floor_at_live(reading, facts.live_offsets)
    with StateStore(job.state_url()) as store:
        epoch = store.ensure_job(job.job_id)
        if new_cut and store.get_cut(job.job_id) is not None:
            epoch = store.bump_epoch(job.job_id)
        cut = store.save_cut(reading.to_cut(job.job_id, epoch))
    crash_point("coordinator.after_cut")
    log.info("job=%s epoch=%d cut ready", job.job_id, cut.epoch)
    return cut


@dataclass(frozen=True)
class PlanInputs:
    """Everything ``make_plan`` reads besides the cut (read from the job and its archive)."""

    slice_records: int
    files: tuple[ArchiveFile, ...]
    unit: BucketUnit
    include_kafka: bool
    key_column: str | None
    key_values: tuple[tuple[KeyValue, ...], ...] | None

    @classmethod
    def of(cls, job: JobSpec) -> PlanInputs:
        """The job's plan inputs (scans the archive's file facts)."""
        slice_by = job.slice_by()
        groups = slice_by.groups() if slice_by else None
        return cls(
            job.backfill.slice_records, tuple(scan_archives(job)), archive_unit(job),
            job.history.kafka, slice_by.column if slice_by else None,
            None if groups is None else tuple(tuple(g) for g in groups),
        )  # fmt: skip

    def fingerprint(self, cut: Cut) -> str:
        """sha256 of these inputs, ``cut``'s offsets and seamline's version: equal
        fingerprints give equal plans (the planner is pure), so a drift check that finds the
        recorded fingerprint needs no new plan."""
        files = [
            (f.path, f.min_time.isoformat(), f.max_time.isoformat(), f.rows, f.bytes,
             None if f.keys is None else sorted(repr(k) for k in f.keys))
            for f in self.files
        ]  # fmt: skip
        doc = [
            _version(), cut.job_id, cut.topic, cut.epoch,
            [(int(p.partition), int(p.log_start), int(p.hwm)) for p in cut.partitions],
            self.slice_records, files, self.unit, self.include_kafka, self.key_column,
            None if self.key_values is None else [repr(k) for k in self.key_values],
        ]  # fmt: skip
        return hashlib.sha256(json.dumps(doc, default=repr).encode()).hexdigest()


def _version() -> str:
    try:
        return importlib.metadata.version("seamline")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def compute_plan(
    job: JobSpec, cut: Cut, *, count: bool, timeout_s: float = 30.0,
    inputs: PlanInputs | None = None,
) -> PlanView:
    """A fresh plan of ``cut`` (archive scan, Kafka slices), exact counts when ``count``."""
    i = inputs if inputs is not None else PlanInputs.of(job)
    plan = make_plan(
        cut, i.slice_records, i.files, i.unit, include_kafka=i.include_kafka,
        key_column=i.key_column, key_values=None if i.key_values is None else list(i.key_values),
    )  # fmt: skip
    if not count:
        return PlanView(plan, stored=False, exact=False)
    kafka = [s for s in plan.slices if s.scope.source == "kafka"]
    estimates = count_kafka_slices(job, cut, kafka, timeout_s)
    return PlanView(with_estimates(plan, estimates), stored=False, exact=True)


def stored_plan(store: StateStore, cut: Cut) -> Plan | None:
    """The plan stored for ``cut``'s epoch, or ``None``."""
    if cut.plan_hash is None:
        return None
    records = store.list_slices(cut.job_id, cut.epoch)
    return Plan(cut, tuple(r.slice for r in records), cut.plan_hash)


def ensure_plan(job: JobSpec, cut: Cut, *, count: bool) -> PlanView:
    """The stored plan of ``cut``, or a new one computed and stored."""
    with StateStore(job.state_url()) as store:
        existing = stored_plan(store, cut)
        if existing is not None:
            return PlanView(existing, stored=True, exact=False)
        inputs = PlanInputs.of(job)
        view = compute_plan(job, cut, count=count, inputs=inputs)
        crash_point("coordinator.mid_plan")
        store.save_plan(cut.job_id, cut.epoch, view.plan.slices, view.plan.plan_hash)
        fresh = store.get_cut(cut.job_id, cut.epoch)
        if fresh is not None and fresh.plan_hash == view.plan.plan_hash:
            store.save_plan_inputs(
                cut.job_id, cut.epoch, inputs.fingerprint(cut), view.plan.plan_hash
            )
    if fresh is None or fresh.plan_hash != view.plan.plan_hash:
        raise StateError(f"job={cut.job_id} epoch={cut.epoch}: plan was not stored")
    return PlanView(Plan(fresh, view.plan.slices, view.plan.plan_hash), True, view.exact)


def plan_drift(job: JobSpec, job_file: str) -> str | None:
    """What to say when the job file no longer gives the stored plan (``None`` when it does).

    The stored plan is immutable (resumes reuse it); the next step is a new cut.
    """
    store = open_existing(job)
    if store is None:
        return None
    with store:
        cut = store.get_cut(job.job_id)
        recorded = store.plan_inputs(job.job_id, cut.epoch) if cut is not None else None
    if cut is None or cut.plan_hash is None:
        return None
    inputs = PlanInputs.of(job)
    if recorded == (inputs.fingerprint(cut), cut.plan_hash):
        return None  # the same inputs: the same plan, without planning again
    fresh = compute_plan(job, cut, count=False, inputs=inputs).plan.plan_hash
    if fresh == cut.plan_hash:
        return None
    return (
        f"job={job.job_id} epoch={cut.epoch}: the job file no longer matches the stored plan "
        f"(expected plan hash {cut.plan_hash[:12]}, found {fresh[:12]}); the stored plan is "
        f"used. To plan from the job file: seamline cut {job_file} --new-cut"
    )


def dry_run_plan(job: JobSpec, *, count: bool, timeout_s: float = 10.0) -> PlanView:
    """The plan without writing anything (nor importing the transform): the stored one if
    any, else computed."""
    validate_job(job, transform=False)
    store = open_existing(job)
    if store is not None:
        with store:
            cut = store.get_cut(job.job_id)
            existing = stored_plan(store, cut) if cut is not None else None
        if existing is not None:
            return PlanView(existing, stored=True, exact=False)
    else:
        cut = None
    if cut is None:
        reading = read_cut(job, timeout_s)
        refuse_unowned_history(job, reading)
        cut = reading.to_cut(job.job_id, Epoch(1))
    return compute_plan(job, cut, count=count)


def ensure_plan_stored(job: JobSpec, cut: Cut) -> Cut:
    """``cut`` with its plan stored: computed and stored when missing; a stored plan is not
    read back (a run of a million-slice plan pages its to-do slices instead)."""
    if cut.plan_hash is not None:
        return cut
    return ensure_plan(job, cut, count=False).plan.cut


def check_source_retained(job: JobSpec, store: StateStore, cut: Cut, timeout_s: float) -> None:
    """``SourceDataLossError`` if retention deleted offsets of slices not yet committed.

    Every planned range starts at or above its partition's ``log_start`` in the cut, so only
    partitions whose log start moved past the cut's can have lost anything: when none did
    (the common case) no slice is read beyond the first Kafka one; otherwise the to-do Kafka
    slices are paged from the store (never held at once) and checked on those partitions."""
    todo: tuple[SliceStatus, ...] = ("pending", "running", "failed")
    pending = (
        r.slice
        for r in store.iter_slices(cut.job_id, cut.epoch, statuses=todo)
        if r.slice.scope.source == "kafka"
    )
    first = next(pending, None)
    if first is None:
        return
    now = read_log_starts(job, timeout_s)
    moved = {
        pc.partition: now[pc.partition]
        for pc in cut.partitions
        if pc.partition in now and now[pc.partition] > pc.log_start
    }
    if moved:
        check_retention(cut, chain((first,), pending), moved)
