"""Mutation suite on real Iceberg and Lance tables fed from a real transactional topic.

The corpus: 2 partitions, transactions that commit and abort (sparse offsets, aborted records),
one malformed record (quarantined by the decoder), floats with NaN / -0.0 / nulls, and
millisecond timestamps that Iceberg stores as microseconds. The backfill writes history
slices, the live side appends ``[hwm, end)``. Each corruption is then written into the table
and must be detected and localised to its slice and row; the clean table must reconcile.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from confluent_kafka import Producer

from backfill.sinks.iceberg.sink import IcebergSink
from backfill.sinks.lance.sink import LanceSink
from coordinator.core import lineage
from coordinator.core.jobspec import JobSpec, parse_job
from coordinator.core.ports import TableSink
from coordinator.core.values import (
    CommitToken,
    Cut,
    Epoch,
    Offset,
    OffsetRange,
    PartitionCut,
    PartitionId,
    Scope,
    Slice,
)
from coordinator.testing.pytest_plugin import TopicFactory
from reconcile.model import ReconcileReport
from reconcile.run import reconcile_job
from reconcile.source import KafkaUnits, SourceUnit
from stream.decode.base import RawMessage
from stream.decode.json import decode_batch
from stream.decode.transform import identity
from tests.apt import apt_install

pytestmark = pytest.mark.integration

FIELDS = {"id": "int64", "name": "string", "price": "float64", "qty": "int64", "ts": "timestamp_ms"}
PRICES = [1.5, float("nan"), -0.0, None, 1e300, 0.1]


def _record(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "name": ["ä", "", "order-" + str(i), None][i % 4],
        "price": PRICES[i % len(PRICES)],
        "qty": None if i % 5 == 0 else i * 7,
        "ts": 1_700_000_000_000 + i * 3_600_000,
    }


@dataclass(frozen=True)
class Corpus:
    job: JobSpec
    cut: Cut
    slices: tuple[Slice, ...]
    committed: dict[int, list[int]]  # partition -> offsets holding committed records
    aborted: dict[int, list[int]]  # partition -> offsets of aborted records


def _produce(bootstrap: str, topic: str) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Per partition: 3 committed, 2 aborted, 4 committed (one malformed), 2 aborted, x3."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"rc-{topic}"})
    producer.init_transactions(30)
    delivered: dict[tuple[int, str], list[int]] = {}

    def on_delivery(tag: str) -> Callable[[Any, Any], None]:
        def record(err: Any, msg: Any) -> None:
            if err is None:
                delivered.setdefault((msg.partition(), tag), []).append(msg.offset())

        return record

    i = 0
    for _round in range(3):
        for size, commit in ((3, True), (2, False), (4, True), (2, False)):
            for p in (0, 1):
                producer.begin_transaction()
                for k in range(size):
                    value = json.dumps(_record(i)).encode()
                    if commit and size == 4 and k == 1 and _round == 1 and p == 0:
                        value = b"{not json"
                    tag = "c" if commit else "a"
                    producer.produce(topic, value, partition=p, on_delivery=on_delivery(tag))
                    i += 1
                producer.flush(30)
                if commit:
                    producer.commit_transaction(30)
                else:
                    producer.abort_transaction(30)
    committed = {p: sorted(delivered[(p, "c")]) for p in (0, 1)}
    aborted = {p: sorted(delivered[(p, "a")]) for p in (0, 1)}
    return committed, aborted


def _job(tmp_path: Path, bootstrap: str, topic: str, fmt: str) -> JobSpec:
    table: dict[str, Any] = {"format": fmt}
    if fmt == "iceberg":
        table |= {"identifier": "rec.orders", "catalog_uri": "sqlite:///unused.db"}
    else:
        table |= {"uri": str(tmp_path / "unused.lance")}
    doc = {
        "stream": {"bootstrap": bootstrap, "topic": topic},
        "schema": {
            "fields": FIELDS,
            "event_time": "ts",
            "required": ["id", "ts"],
            "non_finite": "keep",  # the corpus carries NaN prices into the table
        },
        "table": table,
        "backfill": {"slice_records": 100},
    }
    return parse_job(doc, base_dir=tmp_path, default_id="orders")


def build_corpus(tmp_path: Path, bootstrap: str, topic: str, fmt: str) -> Corpus:
    committed, aborted = _produce(bootstrap, topic)
    parts, slices = [], []
    for p in (0, 1):
        hwm = committed[p][len(committed[p]) * 2 // 3]  # a committed record: live starts there
        mid = hwm // 2
        parts.append(PartitionCut(PartitionId(p), Offset(0), Offset(hwm)))
        for a, b in ((0, mid), (mid, hwm)):
            rng = OffsetRange(PartitionId(p), Offset(a), Offset(b))
            slices.append(Slice(f"s-p{p}-{a}", Scope("kafka", (rng,))))
    cut = Cut("orders", topic, tuple(parts), datetime.now(UTC), Epoch(1))
    job = _job(tmp_path, bootstrap, topic, fmt)
    return Corpus(job, cut, tuple(slices), committed, aborted)


class MemoSource:
    """The real Kafka source, read once: the topic does not change between mutations."""

    def __init__(self, job: JobSpec) -> None:
        self.inner = KafkaUnits(job)
        self.memo: dict[tuple[OffsetRange, ...], SourceUnit] = {}
        self.end_offsets: dict[int, int] | None = None

    def ends(self, partitions: Sequence[int]) -> dict[int, int]:
        if self.end_offsets is None:
            self.end_offsets = self.inner.ends(partitions)
        return self.end_offsets

    def read(self, ranges: Sequence[OffsetRange]) -> SourceUnit:
        key = tuple(ranges)
        if key not in self.memo:
            self.memo[key] = self.inner.read(ranges)
        return self.memo[key]


def _messages(src: MemoSource, rng: OffsetRange) -> list[RawMessage]:
    from stream.kafka.reader import iter_kafka_range

    return [m for batch in iter_kafka_range(src.inner.conf, src.inner.topic, rng) for m in batch]


def load_table(corpus: Corpus, sink: TableSink, src: MemoSource) -> None:
    """Backfill writes the slices, live appends [hwm, end) in two micro-batches."""
    schema = corpus.job.schema_.arrow_schema()
    sink.ensure_table()
    for s in corpus.slices:
        msgs = [m for r in s.scope.ranges for m in _messages(src, r)]
        rows, _ = decode_batch(msgs, schema, identity, "backfill")
        sink.write_slice(s.scope, rows, CommitToken("orders", s.slice_id, 1, Epoch(1), "backfill"))
    ends = src.ends([0, 1])
    for p in corpus.cut.partitions:
        rng = OffsetRange(p.partition, p.hwm, Offset(ends[p.partition]))
        rows, _ = decode_batch(_messages(src, rng), schema, identity, "live")
        token = CommitToken("orders", f"live-{p.partition}", 1, Epoch(1), "live", (rng,))
        sink.append_live(rows, token)


def _sink(fmt: str, corpus: Corpus, catalog: Any, lance_uri: str) -> TableSink:
    schema = corpus.job.schema_.arrow_schema()
    if fmt == "iceberg":
        return IcebergSink(catalog, "rec.orders", schema, "ts", partition_by="day")
    return LanceSink(lance_uri, schema, "ts")


def replace_all(fmt: str, sink: TableSink, data: pa.Table, catalog: Any, uri: str) -> None:
    """Write a corrupted copy of the whole table (the corruption under test)."""
    if fmt == "iceberg":
        catalog.load_table("rec.orders").overwrite(data)
    else:
        lance.write_dataset(data, uri, mode="overwrite")


# -- mutations ------------------------------------------------------------------------------


def _at(t: pa.Table, p: int, o: int) -> pa.Table:
    mask = pc.and_(pc.equal(t[lineage.PARTITION], p), pc.equal(t[lineage.OFFSET], o))
    return t.filter(mask)


def _without(t: pa.Table, p: int, o: int) -> pa.Table:
    mask = pc.and_(pc.equal(t[lineage.PARTITION], p), pc.equal(t[lineage.OFFSET], o))
    return t.filter(pc.invert(mask))


def _set(t: pa.Table, column: str, value: Any) -> pa.Table:
    i = t.schema.get_field_index(column)
    return t.set_column(
        i, t.schema.field(i), pa.array([value] * t.num_rows, t.schema.field(i).type)
    )


@dataclass(frozen=True)
class Mutation:
    name: str
    apply: Callable[[pa.Table, Corpus], pa.Table]
    slice_id: str
    kinds: dict[str, int]  # drill-down kind -> count
    offsets: set[int]  # offsets the drill-down must name (partition 0)
    coverage: dict[str, int]  # partition-0 coverage counts that must be non-zero


def mutations(c: Corpus) -> list[Mutation]:
    off = c.committed[0]
    hwm = c.cut.hwm(0)
    mid = hwm // 2
    a, b = [o for o in off if o < mid][2:4]
    hole = next(o for o in range(mid) if o not in off and o > a)
    last = max(o for o in off if o < hwm)
    abort = next(o for o in c.aborted[0] if o < mid)
    first_slice, last_slice = "s-p0-0", f"s-p0-{mid}"

    def swap(t: pa.Table, _c: Corpus) -> pa.Table:
        ra, rb = _at(t, 0, a), _at(t, 0, b)
        rest = _without(_without(t, 0, a), 0, b)
        ra2 = _set(ra, "qty", rb["qty"][0].as_py())
        rb2 = _set(rb, "qty", ra["qty"][0].as_py())
        return pa.concat_tables([rest, ra2, rb2])

    return [
        Mutation("delete", lambda t, _: _without(t, 0, a), first_slice,
                 {"missing": 1}, {a}, {"lost": 1}),
        Mutation("duplicate", lambda t, _: pa.concat_tables([t, _at(t, 0, a)]), first_slice,
                 {"extra": 1}, {a}, {"duplicated": 1}),
        Mutation("flip", lambda t, _: pa.concat_tables(
                     [_without(t, 0, a), _set(_at(t, 0, a), "name", "flipped")]),
                 first_slice, {"changed": 1}, {a}, {}),
        Mutation("swap", swap, first_slice, {"changed": 2}, {a, b}, {}),
        Mutation("shift", lambda t, _: pa.concat_tables(
                     [_without(t, 0, a), _set(_at(t, 0, a), lineage.OFFSET, hole)]),
                 first_slice, {"missing": 1, "extra": 1}, {a, hole}, {"lost": 1, "phantom": 1}),
        Mutation("phantom", lambda t, _: pa.concat_tables(
                     [t, _set(_at(t, 0, a), lineage.OFFSET, abort)]),
                 first_slice, {"extra": 1}, {abort}, {"phantom": 1}),
        Mutation("drop-at-cut", lambda t, _: _without(t, 0, last), last_slice,
                 {"missing": 1}, {last}, {"lost": 1, "gap": 1}),
        Mutation("overlap", lambda t, _: pa.concat_tables(
                     [t, _set(_at(t, 0, last), lineage.SIDE, "live")]),
                 last_slice, {"extra": 1}, {last}, {"overlap": 1, "wrong_side": 1}),
    ]  # fmt: skip


def check_detected(report: ReconcileReport, m: Mutation) -> None:
    assert not report.reconciled, m.name
    assert [s.slice_id for s in report.mismatched] == [m.slice_id], m.name
    (bad,) = report.mismatched
    assert bad.drilldown is not None
    got = {k: getattr(bad.drilldown, k) for k in ("missing", "extra", "changed")}
    assert got == {k: m.kinds.get(k, 0) for k in got}, m.name
    named = {r.where[lineage.OFFSET] for r in bad.drilldown.rows}
    assert named == m.offsets, m.name
    assert all(r.where[lineage.PARTITION] == 0 for r in bad.drilldown.rows)
    cov0 = report.partitions[0]
    for key in ("lost", "gap", "duplicated", "overlap", "phantom", "wrong_side"):
        assert getattr(cov0, key) == m.coverage.get(key, 0), (m.name, key)
    assert report.partitions[1].ok


def check_clean(report: ReconcileReport, corpus: Corpus) -> None:
    """Zero false mismatches; sparse offsets and the malformed record are not "lost"."""
    assert report.reconciled, report.to_json()
    assert all(s.drilldown is None for s in report.slices)
    for cov in report.partitions:
        committed = corpus.committed[cov.partition]
        assert cov.source_records == len(committed) < cov.end  # sparse: holes exist
        assert cov.lost == 0 and cov.phantom == 0
    assert sum(c.quarantined for c in report.partitions) == 1
    assert sum(s.quarantined for s in report.slices) == 1


@pytest.mark.parametrize("fmt", ["iceberg", "lance"])
def test_every_mutation_is_detected_and_localised(
    fmt: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    iceberg_catalog: Any,
    lance_uri: str,
) -> None:
    corpus = build_corpus(tmp_path, kafka_bootstrap, kafka_topic(2), fmt)
    sink = _sink(fmt, corpus, iceberg_catalog, lance_uri)
    src = MemoSource(corpus.job)
    load_table(corpus, sink, src)

    def run() -> ReconcileReport:
        return reconcile_job(corpus.job, corpus.cut, corpus.slices, sink=sink, source=src)

    check_clean(run(), corpus)
    clean = sink.scan()
    stored = clean.schema.field("ts").type
    assert stored == pa.timestamp("us" if fmt == "iceberg" else "ms", tz="UTC")
    assert any(v is not None and math.isnan(v) for v in clean["price"].to_pylist())
    for m in mutations(corpus):
        replace_all(fmt, sink, m.apply(clean, corpus), iceberg_catalog, lance_uri)
        check_detected(run(), m)
    replace_all(fmt, sink, clean, iceberg_catalog, lance_uri)
    check_clean(run(), corpus)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium(html: Path, tmp_path: Path, name: str) -> tuple[Path, str]:
    """Screenshot and DOM of ``html`` from headless Chromium; fails loudly without it."""
    import shutil
    import subprocess

    exe = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if exe is None and shutil.which("apt-get"):  # Debian's chromium, like the PostgreSQL fixture
        apt_install("chromium")
        exe = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if exe is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium", pytrace=False)
    png = tmp_path / f"{name}.png"
    base = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / ('chrome-' + name)}"]
    subprocess.run(
        [*base, f"--screenshot={png}", "--window-size=1200,1600", html.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    dom = subprocess.run(
        [*base, "--dump-dom", html.as_uri()], check=True, capture_output=True, text=True,
        timeout=120,
    ).stdout  # fmt: skip
    return png, dom


def test_html_report_renders_the_verdict_in_chromium(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory, lance_uri: str
) -> None:
    from reconcile.report import render_html, render_json, render_text

    corpus = build_corpus(tmp_path, kafka_bootstrap, kafka_topic(2), "lance")
    sink = _sink("lance", corpus, None, lance_uri)
    src = MemoSource(corpus.job)
    load_table(corpus, sink, src)
    report = reconcile_job(corpus.job, corpus.cut, corpus.slices, sink=sink, source=src)
    assert report.reconciled
    assert json.loads(render_json(report))["reconciled"] is True
    assert "RECONCILED" in render_text(report)
    html = tmp_path / "report.html"
    html.write_text(render_html(report), encoding="utf-8")
    png, dom = _chromium(html, tmp_path, "reconciled")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'id="verdict"' in dom and 'data-reconciled="true"' in dom
    assert ">RECONCILED<" in dom.replace("\n", "")

    clean = sink.scan()
    m = next(m for m in mutations(corpus) if m.name == "overlap")
    replace_all("lance", sink, m.apply(clean, corpus), None, lance_uri)
    bad = reconcile_job(corpus.job, corpus.cut, corpus.slices, sink=sink, source=src)
    html_bad = tmp_path / "report-bad.html"
    html_bad.write_text(render_html(bad), encoding="utf-8")
    png_bad, dom_bad = _chromium(html_bad, tmp_path, "mismatch")
    assert png_bad.stat().st_size > 10_000
    assert 'data-reconciled="false"' in dom_bad and "NOT RECONCILED" in dom_bad
    assert 'class="bad-mark"' in dom_bad
    keep = Path("/tmp/seamline-reconcile-report")
    keep.mkdir(exist_ok=True)
    for f in (png, png_bad, html, html_bad):
        shutil_copy(f, keep / f.name)


def shutil_copy(src: Path, dst: Path) -> None:
    """Keep the rendered report for a person to look at (best effort)."""
    import shutil

    shutil.copyfile(src, dst)
