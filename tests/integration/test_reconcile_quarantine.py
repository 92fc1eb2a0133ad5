"""Quarantined records count as quarantined, not lost (DESIGN §7), read from the dead-letter topic.

End to end: poison records on both sides of the cut; the backfill executor and ``seamline live``
(a subprocess) confirm them to the dead-letter topic; ``seamline reconcile`` passes with
quarantined == N and lost == 0. Then a record held only by the dead-letter topic (a valid
record an operator quarantined) is quarantined while listed there and lost once it is not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import lance
import pyarrow.compute as pc
import pytest

from coordinator.core import lineage
from coordinator.core.values import (
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
from reconcile.run import reconcile_job
from reconcile.source import dead_letter_topic, read_dead_letters
from stream.decode.base import Quarantined
from stream.kafka.quarantine import QuarantineWriter, ensure_topic
from tests.integration.test_live_support import (
    ends,
    produce,
    start_live,
    stop_live,
    table_offsets,
    wait_until,
    write_job,
)
from tests.integration.test_reconcile_mutations import MemoSource, build_corpus, load_table
from tests.integration.test_reconcile_support import reconcile_json, run_slices, store_plan

pytestmark = pytest.mark.integration

POISON = (b"{not json", b'{"ts": 1700000000000, "name": "no id"}', b'{"id": "x", "ts": 1}')


def _poison(i: int) -> bytes | None:
    return POISON[(i // 100) % 3] if i % 100 == 37 else None


def _bad(delivered: dict[tuple[int, int], bytes]) -> set[tuple[int, int]]:
    return {k for k, v in delivered.items() if v in POISON}


def test_live_and_backfill_quarantine_reconciles_with_zero_lost(
    kafka_bootstrap: str, kafka_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = kafka_topic(3)
    history = produce(kafka_bootstrap, topic, 600, poison=_poison)
    job = write_job(tmp_path, kafka_bootstrap, topic)
    hwm = ends(history)
    parts = tuple(PartitionCut(PartitionId(p), Offset(0), Offset(hwm[p])) for p in sorted(hwm))
    cut = Cut(job.job_id, topic, parts, datetime.now(UTC), Epoch(1))
    slices = [
        Slice(f"h-p{p.partition}", Scope("kafka", (OffsetRange(p.partition, Offset(0), p.hwm),)))
        for p in parts
    ]
    store = store_plan(job, cut, slices)
    run_slices(job, store, slices)  # the executor confirms its poison records to the DLQ
    proc = start_live(job)
    live = produce(kafka_bootstrap, topic, 900, poison=_poison)
    target = ends({**history, **live})
    wait_until(lambda: table_offsets(job) == target, 90, f"table offsets {target}")
    assert stop_live(proc) == 0
    bad = _bad(history) | _bad(live)
    assert len(bad) == 15
    assert read_dead_letters(job) == {
        p: {o for q, o in bad if q == p} for p in sorted({p for p, _ in bad})
    }

    html = tmp_path / "report.html"
    code, doc = reconcile_json(str(tmp_path / "job.toml"), "--html", str(html))
    assert code == 0, doc
    assert doc["reconciled"] is True
    assert doc["dead_letter_topic"] == dead_letter_topic(job) == f"{topic}.seamline-dlq"
    assert doc["dead_letters"] == 15
    totals = doc["totals"]
    assert (totals["quarantined"], totals["lost"], totals["in_flight"]) == (15, 0, 0)
    assert totals["source_rows"] == totals["table_rows"] == 1500 - 15
    for part in doc["partitions"]:
        assert part["quarantined"] == len({o for p, o in bad if p == part["partition"]})
    assert "1,500 Kafka, 15 quarantined" in html.read_text()  # the report's source total
    store.close()


def test_a_record_listed_only_in_the_dead_letter_topic_is_quarantined_not_lost(
    kafka_bootstrap: str, kafka_topic: TopicFactory, tmp_path: Path, lance_uri: str
) -> None:
    from backfill.sinks.lance.sink import LanceSink

    corpus = build_corpus(tmp_path, kafka_bootstrap, kafka_topic(2), "lance")
    sink = LanceSink(lance_uri, corpus.job.schema_.arrow_schema(), "ts")
    src = MemoSource(corpus.job)
    load_table(corpus, sink, src)
    victim = corpus.committed[1][3]  # a valid history record, removed from the table
    data = lance.dataset(lance_uri).to_table()
    keep = pc.invert(
        pc.and_(pc.equal(data[lineage.PARTITION], 1), pc.equal(data[lineage.OFFSET], victim))
    )
    lance.write_dataset(data.filter(keep), lance_uri, mode="overwrite")

    before = reconcile_job(corpus.job, corpus.cut, corpus.slices, sink=sink, source=src)
    assert not before.reconciled
    assert (before.partitions[1].lost, before.partitions[1].quarantined) == (1, 0)
    assert before.dead_letters == 0  # the DLQ topic does not exist yet: nothing listed

    conf, dlq = corpus.job.kafka_config(), dead_letter_topic(corpus.job)
    ensure_topic(conf, dlq)
    record = Quarantined(1, victim, "quarantined by an operator", b"{}")
    QuarantineWriter(conf, dlq, corpus.job.stream.topic).write([record])
    after = reconcile_job(corpus.job, corpus.cut, corpus.slices, sink=sink, source=src)
    assert after.reconciled, after.to_json()
    assert after.partitions[1].lost == 0 and after.partitions[1].quarantined == 1
    assert after.dead_letters == 1
    # the listed record leaves the slice's source side too: no checksum mismatch either
    assert sum(s.quarantined for s in after.slices) == 2  # with the corpus's malformed one
