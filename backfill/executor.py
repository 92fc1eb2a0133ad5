"""The ``SliceExecutor`` the coordinator's runner calls in worker processes (picklable).

``execute_slice`` looks the slice's token up first: a slice already in the table is not
written again (``already_committed=True``). Otherwise it reads the slice (Kafka range or
archive bucket), evaluates the job's ``[[backfill.assert]]`` checks on the rows (a failure
raises ``SliceAssertionError`` and nothing is written or quarantined), confirms quarantined
records to the dead-letter topic (Kafka slices) or writes the slice's archive quarantine file
(archive slices: bad rows with file and row, see ``backfill.archive_quarantine``), and writes
the slice's scope in ONE commit.

Append mode (``[backfill] mode = "append"``) deletes nothing, so before writing it checks the
slice's scope holds no row yet (a Kafka slice: no row of its partition and offsets, from either
side; an archive slice: no archive row of its bucket); a scope that does is refused with a
terminal ``ConfigError`` (writing would duplicate those rows), e.g. after a new cut moved slice
boundaries or live already wrote offsets the new plan gives to history.

Write-audit-publish (``[backfill] publish = "atomic"``): the slice's data files are staged
(written under the table, not committed) and described in the result's ``staged`` JSON, which
the coordinator keeps in the state store; one publish commit makes every slice visible later
(``coordinator.run.publish``). With ``[backfill] committer = "coordinator"`` slices are staged
the same way and the coordinator commits them in batches (``coordinator.run.committer``).

Warm workers keep their sink: a worker process (one of the coordinator's pool, or a Ray worker)
serving many slices of one job opens the job's catalog/dataset sink once, creates the table
once, and reuses it (:func:`worker_sink`). That is safe because the backfill sinks hold no
table state between calls: every lookup and every commit loads the table's current head (an
Iceberg table is reloaded, a Lance dataset opened at its latest version), so a commit stays
conditional on the head it was planned on; what they keep is the catalog (its connections) and,
for Lance, the transaction properties of committed versions (immutable once written). A slice
that fails drops its sink (the next one starts from a fresh catalog). Outside a worker
(``reprocess``, tests calling :func:`execute_slice` directly) every call opens a fresh sink, as
before.

Crash points (``coordinator.core.faults``, armed by ``SEAMLINE_CRASH_AT``):
``worker.before_commit`` (data files written, commit not yet made) and ``worker.after_commit``
(committed, the result not yet returned to the state store).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import pickle
from collections import OrderedDict
from typing import Protocol, cast

import pyarrow as pa

from backfill.archive_quarantine import write_quarantine
from backfill.assertions import check_slice
from backfill.sinks import open_sink
from backfill.sinks.staged import StagingTable
from backfill.sources.archive import read_archive
from backfill.sources.kafka import decode_kafka_slice
from coordinator.core import lineage
from coordinator.core.errors import ConfigError
from coordinator.core.faults import crash_point
from coordinator.core.jobspec import JobSpec
from coordinator.core.lineage import with_lineage
from coordinator.core.logs import configure_worker_logging
from coordinator.core.ports import SliceResult, SliceWriter, TableReader
from coordinator.core.role import is_slice_worker
from coordinator.core.values import CommitToken, Slice
from stream.decode.base import Quarantined
from stream.kafka.quarantine import QuarantineWriter, default_topic, ensure_topic

log = logging.getLogger(__name__)


def read_slice(job: JobSpec, slice_: Slice) -> tuple[pa.Table, list[Quarantined]]:
    """All rows of one Kafka slice (with lineage) and its quarantined records."""
    tables: list[pa.Table] = []
    bad: list[Quarantined] = []
    for table, quarantined in decode_kafka_slice(job, slice_):
        tables.append(table)
        bad.extend(quarantined)
    if not tables:
        return with_lineage(job.schema_.arrow_schema()).empty_table(), bad
    return pa.concat_tables(tables), bad


def _quarantine(job: JobSpec, bad: list[Quarantined]) -> None:
    if not bad:
        return
    topic = job.live.quarantine_topic or default_topic(job.stream.topic)
    conf = job.kafka_config()
    ensure_topic(conf, topic)
    QuarantineWriter(conf, topic, job.stream.topic).write(bad)


class ScopeWriter(SliceWriter, TableReader, Protocol):
    """What the executor needs of a table: write slices, and read a scope (append mode)."""


#: Sinks this worker opened, by job (see the module docstring); the newest few are kept.
_SINKS: OrderedDict[bytes, ScopeWriter] = OrderedDict()
SINK_CACHE_SIZE = 4


def _job_key(job: JobSpec) -> bytes:
    """Two jobs share a sink only if they are equal, secrets and base directory included."""
    return hashlib.sha256(pickle.dumps(job)).digest()


def worker_sink(job: JobSpec) -> tuple[ScopeWriter, bytes | None]:
    """The job's sink, its table ensured, and its cache key (``None``: not cached).

    In a slice worker (a worker-pool process or a Ray worker, see
    :mod:`coordinator.core.role`) the sink is opened once and reused for every later slice of
    the job; anywhere else a fresh one is opened each time.
    """
    if not is_slice_worker():
        fresh: ScopeWriter = open_sink(job)
        fresh.ensure_table()
        return fresh, None
    key = _job_key(job)
    sink = _SINKS.get(key)
    if sink is None:
        sink = open_sink(job)
        sink.ensure_table()
        _SINKS[key] = sink
        while len(_SINKS) > SINK_CACHE_SIZE:
            _SINKS.popitem(last=False)
    _SINKS.move_to_end(key)
    return sink, key


def _check_append_scope(sink: TableReader, slice_: Slice) -> None:
    held = sink.scan(slice_.scope, columns=[lineage.SIDE]).num_rows
    if held:
        raise ConfigError(
            f"slice_id={slice_.slice_id}: append mode expected an empty scope, found {held} rows "
            "already in the table (appending would write them twice)",
            hint='use mode = "overwrite" (or "merge") for history that can overlap',
        )


def execute_slice(job: JobSpec, slice_: Slice, token: CommitToken) -> SliceResult:
    """Run one slice end to end; idempotent by token."""
    if multiprocessing.parent_process() is not None:  # a worker: log like the coordinator
        configure_worker_logging()
    log.debug("slice start: job_id=%s slice_id=%s", token.job_id, slice_.slice_id)
    sink, key = worker_sink(job)
    try:
        return _execute(job, slice_, token, sink)
    except BaseException:
        if key is not None:
            _SINKS.pop(key, None)  # the next slice starts from a fresh catalog
        raise


def _execute(job: JobSpec, slice_: Slice, token: CommitToken, sink: ScopeWriter) -> SliceResult:
    # With the coordinator committing, a slice's own token is never in the table (its batch's
    # is, found by the coordinator before it runs anything) and an overwrite is idempotent by
    # scope: the lookup would only cost a table load per slice. Append mode keeps it.
    batched = job.backfill.committer == "coordinator" and job.backfill.mode == "overwrite"
    found = None if batched else sink.find_commit(token.job_id, slice_.slice_id)
    if found is not None:
        log.info("slice already committed: job_id=%s slice_id=%s", token.job_id, slice_.slice_id)
        return SliceResult(rows=found.rows or 0, commit=found, already_committed=True)
    if job.backfill.mode == "append":
        _check_append_scope(sink, slice_)
    if slice_.scope.source == "archive":
        archive = read_archive(job, slice_)
        data, quarantined = archive.rows, len(archive.bad)
        check_slice(job, slice_, data)
        write_quarantine(job, slice_, archive.bad)
    else:
        data, bad = read_slice(job, slice_)
        quarantined = len(bad)
        check_slice(job, slice_, data)
        _quarantine(job, bad)
    if job.backfill.publish == "atomic" or job.backfill.committer == "coordinator":
        # write-audit-publish, or the coordinator commits: files written, not yet visible
        staged = cast(StagingTable, sink).stage_slice(slice_.scope, data, token)
        log.info("slice staged: job_id=%s slice_id=%s rows=%d", token.job_id,
                 slice_.slice_id, data.num_rows)  # fmt: skip
        return SliceResult(rows=data.num_rows, commit=None, quarantined=quarantined,
                           staged=staged)  # fmt: skip
    record = sink.write_slice(slice_.scope, data, token)
    crash_point("worker.after_commit")
    return SliceResult(rows=data.num_rows, commit=record, quarantined=quarantined)
