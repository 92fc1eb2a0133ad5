"""Custom-key slices on real Kafka and real Iceberg and Lance tables: archive history sliced
currency x month (values discovered from the files), reconciled 0/0/0; one currency's month
is then changed in the archive and its slice re-written: exactly that scope is replaced (read
back from the table), other currencies' rows and the live rows (including a late live event in
that very month and currency) survive, and the run still reconciles."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from backfill.sinks import open_sink
from backfill.sources.archive import read_archive_slice
from coordinator.core.errors import ExitCode
from coordinator.core.jobspec import JobSpec, load_job
from coordinator.core.values import CommitToken
from coordinator.demo.data import orders
from coordinator.state.store import StateStore
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_e2e_support import (
    LIVE_FROM,
    ZERO,
    counts,
    ends_of,
    job_path,
    json_out,
    live_consumer,
    load_history,
    produce_rows,
    seamline,
    table_rows,
    take_cut,
    wait_until,
    write_job,
)

pytestmark = pytest.mark.integration

SLICE_BY = 'slice_by = { column = "currency" }\n'
FEB = (datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))
TENANT = "EUR"


def _keyed_job(tmp_path: Path, fmt: str, bootstrap: str, topic: str) -> JobSpec:
    job = write_job(tmp_path, fmt, bootstrap, topic, slice_records=60)
    path = Path(job_path(job))
    path.write_text(path.read_text().replace('bucket = "month"\n', 'bucket = "month"\n' + SLICE_BY))
    return load_job(path)


def _in_feb_eur(rows: pa.Table) -> pa.ChunkedArray:
    ts = rows["ts"]
    return pc.and_(
        pc.equal(rows["currency"], TENANT),
        pc.and_(pc.greater_equal(ts, pa.scalar(FEB[0], ts.type)), pc.less(ts, pa.scalar(FEB[1], ts.type))),
    )


def _change_archive(folder: Path) -> pa.Table:
    """EUR orders of February: amounts + 1000 and one order removed. Returns the new archive."""
    out = []
    for path in sorted(folder.glob("*.parquet")):
        data = pq.read_table(path)
        hit = _in_feb_eur(data)
        data = data.set_column(
            data.schema.get_field_index("amount"), "amount",
            pc.if_else(hit, pc.add(data["amount"], 1000.0), data["amount"]),
        )  # fmt: skip
        if pc.any(hit).as_py():
            first = pc.index(hit, True).as_py()
            data = pa.concat_tables([data.slice(0, first), data.slice(first + 1)])
        pq.write_table(data, path)
        out.append(data)
    return pa.concat_tables(out)


def _source(rows: pa.Table, tag: str) -> pa.Table:
    return rows.filter(pc.equal(rows["_seamline_source"], tag))


def feb_eur(rows: pa.Table) -> pa.Table:
    """Archive rows of the re-written scope (February, EUR)."""
    return _source(rows, "archive").filter(_in_feb_eur(_source(rows, "archive")))


def others(rows: pa.Table) -> pa.Table:
    """Archive rows outside it."""
    arch = _source(rows, "archive")
    return arch.filter(pc.invert(_in_feb_eur(arch)))


def _live_at(job: JobSpec) -> dict[int, int]:
    try:
        return {int(p): int(o) for p, o in open_sink(job).live_offsets().items()}
    except Exception:  # the live consumer has not created the table yet
        return {}


def _live_rows(job: JobSpec) -> list[tuple[int, float]]:
    rows = table_rows(job)
    live = rows.filter(pc.equal(rows["_seamline_side"], "live"))
    return sorted(zip(live["order_id"].to_pylist(), live["amount"].to_pylist(), strict=True))


def _archive_rows(rows: pa.Table) -> list[tuple[int, str, float]]:
    arch = rows.filter(pc.equal(rows["_seamline_source"], "archive"))
    cols = [arch[c].to_pylist() for c in ("order_id", "currency", "amount")]
    return sorted(zip(*cols, strict=True))


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_tenant_by_month_slices_replace_exactly_their_scope(
    fmt: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(3, config={"retention.ms": "-1"})
    history = load_history(tmp_path, kafka_bootstrap, topic, archive_n=120, topic_n=60)
    job = _keyed_job(tmp_path, fmt, kafka_bootstrap, topic)
    take_cut(job)
    late = orders(9001, 3, FEB[0], FEB[1], seed=3)  # late live events in archive February
    late = late.set_column(late.schema.get_field_index("currency"), "currency",
                           pa.array([TENANT] * 3))  # fmt: skip
    fresh = orders(9101, 6, LIVE_FROM, datetime(2024, 6, 2, tzinfo=UTC), seed=4)
    with live_consumer(job):
        delivered = produce_rows(kafka_bootstrap, topic, pa.concat_tables([late, fresh]),
                                 record_ts=False)  # fmt: skip
        ends = ends_of({**history.delivered, **delivered})
        wait_until(lambda: _live_at(job) == ends, 90, "live to write the live records")

        res = seamline("run", job_path(job), "--output", "json")
        assert res.returncode == ExitCode.OK, res.stdout[-2000:] + res.stderr[-2000:]
        doc = json_out(res)
        assert doc["reconciled"] is True and counts(doc["reconcile"]) == ZERO, doc

        with StateStore(job.state_url(), create=False) as store:
            ids = [r.slice_id for r in store.list_slices(job.job_id)]
        archive_ids = {sid for sid in ids if sid.startswith("a-")}
        currencies = set(history.archive["currency"].to_pylist())
        assert archive_ids == {f"a-month-2024{m:02d}-currency={c}"
                               for m in (1, 2, 3) for c in currencies}  # fmt: skip
        before = table_rows(job)
        assert _archive_rows(before) == _archive_rows(
            history.archive.append_column("_seamline_source", pa.array(
                ["archive"] * history.archive.num_rows))
        )  # fmt: skip
        live_before = _live_rows(job)
        assert {9001, 9002, 9003} <= {o for o, _ in live_before}

        changed = _change_archive(tmp_path / "archive")
        with StateStore(job.state_url(), create=False) as store:
            record = next(r for r in store.list_slices(job.job_id)
                          if r.slice_id == f"a-month-202402-currency={TENANT}")  # fmt: skip
            epoch = store.get_cut(job.job_id).epoch  # type: ignore[union-attr]
        token = CommitToken(job.job_id, record.slice_id, 2, epoch, "backfill")
        open_sink(job).write_slice(record.slice.scope, read_archive_slice(job, record.slice), token)

        after = table_rows(job)
        new_part = feb_eur(changed.append_column(
            "_seamline_source", pa.array(["archive"] * changed.num_rows)))  # fmt: skip
        assert _archive_rows(feb_eur(after)) == _archive_rows(new_part)
        assert feb_eur(after).num_rows == feb_eur(before).num_rows - 1
        assert _archive_rows(others(after)) == _archive_rows(others(before))
        assert _live_rows(job) == live_before, "live rows survive (the late EUR ones too)"
        assert _source(after, "kafka").num_rows == _source(before, "kafka").num_rows

        rec = seamline("reconcile", job_path(job), "--output", "json")
        assert rec.returncode == ExitCode.OK, rec.stdout[-2000:]
        report = json_out(rec)
        assert report["reconciled"] is True and counts(report["totals"]) == ZERO
