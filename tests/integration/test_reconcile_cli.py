"""``seamline reconcile`` end to end: job file, state store, real topic, real Lance table."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import lance
import pyarrow.compute as pc
import pytest

from backfill.sinks.lance.sink import LanceSink
from coordinator.core import lineage
from coordinator.core.jobspec import load_job
from coordinator.core.values import CommitToken, Epoch
from coordinator.state.store import StateStore
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_reconcile_mutations import FIELDS, MemoSource, build_corpus, load_table

pytestmark = pytest.mark.integration


def _job_file(tmp_path: Path, bootstrap: str, topic: str) -> Path:
    fields = "\n".join(f'{k} = "{v}"' for k, v in FIELDS.items())
    path = tmp_path / "orders.toml"
    path.write_text(
        f"""[job]
id = "orders"
[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
[schema]
event_time = "ts"
required = ["id", "ts"]
non_finite = "keep"  # the corpus carries NaN prices on purpose (stored, not quarantined)
[schema.fields]
{fields}
[table]
format = "lance"
uri = "orders.lance"
[backfill]
slice_records = 100
""",
        encoding="utf-8",
    )
    return path


def _seamline(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from coordinator.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )


def test_reconcile_command_exit_codes_and_state(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(2)
    corpus = build_corpus(tmp_path, kafka_bootstrap, topic, "lance")
    job = load_job(_job_file(tmp_path, kafka_bootstrap, topic))
    sink = LanceSink(str(tmp_path / "orders.lance"), job.schema_.arrow_schema(), "ts")
    load_table(corpus, sink, MemoSource(corpus.job))
    (tmp_path / ".seamline").mkdir()
    store = StateStore(job.state_url())
    epoch = store.ensure_job("orders")
    store.save_cut(corpus.cut)
    store.save_plan("orders", epoch, list(corpus.slices), "plan-hash")
    for s in corpus.slices:
        store.mark_running("orders", s.slice_id, epoch)
        token = CommitToken("orders", s.slice_id, 1, Epoch(epoch), "backfill")
        store.mark_committed("orders", s.slice_id, epoch, rows=1, token=token)

    html = tmp_path / "r.html"
    ok = _seamline(
        "reconcile", str(tmp_path / "orders.toml"), "--output", "json", "--html", str(html)
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["reconciled"] is True
    # phases and compared slices reach stderr as plain lines (not a TTY)
    phases = ok.stderr.splitlines()
    assert "reconcile: checking keys" in phases, ok.stderr
    assert "reconcile: offset coverage per partition" in phases, ok.stderr
    assert any(re.match(r"reconcile: (\d+)/\1 slices \(100%\)", line) for line in phases)
    assert 'data-reconciled="true"' in html.read_text()
    latest = store.latest_reconcile("orders")
    assert latest is not None and latest.reconciled
    assert {r.status for r in store.list_slices("orders")} == {"reconciled"}

    uri = str(tmp_path / "orders.lance")
    data = lance.dataset(uri).to_table()
    lance.write_dataset(
        data.filter(pc.not_equal(data[lineage.OFFSET], corpus.committed[1][0])),
        uri,
        mode="overwrite",
    )
    bad = _seamline("reconcile", str(tmp_path / "orders.toml"))
    assert bad.returncode == 1, bad.stderr
    assert "NOT RECONCILED" in bad.stdout and "missing" in bad.stdout

    job_missing_state = _seamline("reconcile", str(tmp_path / "nope.toml"))
    assert job_missing_state.returncode == 3
    store.close()


def test_reconcile_without_a_stored_cut_is_an_error(tmp_path: Path) -> None:
    path = _job_file(tmp_path, "127.0.0.1:1", "t")
    (tmp_path / ".seamline").mkdir()
    StateStore(load_job(path).state_url()).ensure_job("orders")
    out = _seamline("reconcile", str(path))
    assert out.returncode == 2 and "expected a stored cut" in out.stderr
