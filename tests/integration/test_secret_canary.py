"""Secret canaries: no secret a job can carry leaks anywhere, on success or failure.

Every secret gets a unique canary: the SASL password (``${ENV}``; the broker is PLAINTEXT and
librdkafka carries SASL settings without using them, so the succeeding runs carry it), the
state URL password in userinfo and in the query (``password``, ``sslpassword``), the catalog
URI password (``${ENV}``), S3 keys in catalog properties (one from ``${ENV}``). The real
``seamline`` runs ``cut/plan/run/status/reconcile`` with ``--log-level DEBUG --log-json``,
two worker processes, succeeding against Kafka + SQLite state + an Iceberg table and failing
(unreachable PostgreSQL state store or catalog, wrong-typed config, unencoded '@'). Then
stdout, stderr, the state DB and catalog dumps, every table file and the reports are grepped:
zero canaries. Worker processes must log JSON like their coordinator.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from coordinator.testing.pytest_plugin import TopicFactory

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEAMLINE = str(Path(sys.executable).parent / "seamline")
_TAG = uuid.uuid4().hex[:8]
CANARIES = {
    name: f"cnry{_TAG}{name}"
    for name in ("sasl", "userinfo", "query", "sslquery", "catalog", "s3id", "s3key", "s3tok")
}
ENV = {
    "SEAMLINE_CANARY_SASL": CANARIES["sasl"],
    "SEAMLINE_CANARY_CATALOG": CANARIES["catalog"],
    "SEAMLINE_CANARY_S3KEY": CANARIES["s3key"],
}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PG = f"127.0.0.1:{_closed_port()}"
BAD_STATE = (
    f"postgresql+psycopg://app:{CANARIES['userinfo']}@{PG}/state?connect_timeout=2"
    f"&password={CANARIES['query']}&sslpassword={CANARIES['sslquery']}"
)
BAD_CATALOG = f"postgresql+psycopg://app:${{SEAMLINE_CANARY_CATALOG}}@{PG}/cat?connect_timeout=2"


def job_toml(root: Path, topic: str, bootstrap: str, *, catalog: str = "", state: str = "") -> str:
    catalog = catalog or f"sqlite:///{root}/catalog.db"
    return f"""
[job]
id = "canary"

[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"
[stream.security]
protocol = "PLAINTEXT"
sasl_username = "app"
sasl_password = "${{SEAMLINE_CANARY_SASL}}"

[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"
amount = "float64"

[table]
format = "iceberg"
identifier = "db.orders"
catalog_uri = "{catalog}"
warehouse = "{root}/warehouse"
[table.catalog_properties]
"s3.access-key-id" = "{CANARIES['s3id']}"
"s3.secret-access-key" = "${{SEAMLINE_CANARY_S3KEY}}"
"s3.session-token" = "{CANARIES['s3tok']}"

[backfill]
slice_records = 10
concurrency = 2
max_attempts = 1
{state}
"""


class Runs:
    """Every seamline subprocess of a test, with everything it printed."""

    def __init__(self) -> None:
        self.outputs: list[tuple[list[str], str, str]] = []

    def __call__(self, *args: str, rc: int | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [SEAMLINE, "--log-level", "DEBUG", "--log-json", *args]
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **ENV},
        )  # fmt: skip
        self.outputs.append((list(args), res.stdout, res.stderr))
        if rc is not None:
            assert res.returncode == rc, (args, res.returncode, res.stderr[-3000:])
        return res


def produce(bootstrap: str, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        doc = {"order_id": i, "ts": 1_704_067_200_000 + i * 1000, "amount": 1.5}
        producer.produce(topic, json.dumps(doc).encode(), partition=i % 2)
    assert producer.flush(30) == 0


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [name for name, c in CANARIES.items() if c.encode() in data]


def dump_sqlite(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return "\n".join(con.iterdump())
    finally:
        con.close()


def files_under(root: Path) -> Iterator[Path]:
    yield from (p for p in sorted(root.rglob("*")) if p.is_file())


def stderr_lines_are_json(stderr: str, args: object = None) -> list[dict[str, object]]:
    """Every stderr line is a JSON log record (librdkafka's own ``%N|`` lines and the CLI's
    final ``error:`` line aside)."""
    docs = []
    for line in stderr.splitlines():
        if not line.strip() or line.startswith(("%", "error: ")):
            continue
        assert line.startswith("{"), (args, line, stderr[-3000:])  # e.g. a worker's plain text
        docs.append(json.loads(line))
    return docs


def run_live_briefly(
    runs: Runs, job: Path, bootstrap: str, topic: str
) -> tuple[str, list[bytes]]:
    """``seamline live`` with ``/metrics`` while 10 records and one poison record arrive; returns
    the scraped metrics text and every dead-letter message's bytes (value, key, headers)."""
    port = _closed_port()  # free now; live binds it
    cmd = [SEAMLINE, "--log-level", "DEBUG", "--log-json", "live", str(job),
           "--metrics-port", str(port)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **ENV},
    )  # fmt: skip
    try:
        produce(bootstrap, topic, 10)
        poison = Producer({"bootstrap.servers": bootstrap})
        poison.produce(topic, b"not json at all", partition=0)
        assert poison.flush(30) == 0
        metrics = _scrape_until_committed(port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        runs.outputs.append((["live"], out, err))
    return metrics, _dead_letters(bootstrap, f"{topic}.seamline-dlq")


def _scrape_until_committed(port: int, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 180
    text = ""
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            text = ""
        if 'seamline_live_quarantined_total{job="canary"} 1.0' in text:
            return text
        time.sleep(1)
    raise AssertionError(f"live never quarantined the poison record: {text[-2000:]}")


def _dead_letters(bootstrap: str, dlq: str) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"canary-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest"})  # fmt: skip
    consumer.subscribe([dlq])
    found: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while not found and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            parts: list[bytes] = [msg.value() or b"", msg.key() or b""]
            for _, value in list(msg.headers() or []):
                parts.append(value.encode() if isinstance(value, str) else value or b"")
            found.append(b"|".join(parts))
    finally:
        consumer.close()
    return found


def test_no_canary_leaks_from_succeeding_and_failing_commands(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(2)
    produce(kafka_bootstrap, topic, 40)
    (tmp_path / "warehouse").mkdir()
    runs = Runs()
    good = tmp_path / "good.toml"
    good.write_text(job_toml(tmp_path, topic, kafka_bootstrap))
    runs("cut", str(good), "--output", "json", rc=0)
    runs("plan", str(good), "--dry-run", "--output", "json", rc=0)
    runs("plan", str(good), "--output", "json", rc=0)
    run = runs("run", str(good), "--output", "json", rc=0)
    runs("status", str(good), "--output", "json", rc=0)
    report = tmp_path / "report.html"
    runs("reconcile", str(good), "--output", "json", "--html", str(report), rc=0)
    assert json.loads(run.stdout)["exit_code"] == 0, run.stdout

    # live (with /metrics and a poison record for the dead-letter topic), then reprocess
    metrics, dead = run_live_briefly(runs, good, kafka_bootstrap, topic)
    assert "seamline_live_records_total" in metrics
    assert dead and b"not json at all" in dead[0], dead
    assert not leaks(metrics) and not any(leaks(d) for d in dead), (leaks(metrics), dead)
    today = datetime.now(UTC).date()
    runs("reprocess", str(good), "--from", str(today - timedelta(days=1)),
         "--to", str(today + timedelta(days=1)), "--output", "json", rc=0)  # fmt: skip

    # workers logged, and logged JSON like the coordinator
    loggers = {str(d["logger"]) for d in stderr_lines_are_json(run.stderr)}
    assert "backfill.executor" in loggers, loggers

    # failing: the state store (userinfo + query passwords) and the catalog are unreachable
    bad_state = tmp_path / "bad_state.toml"
    bad_state.write_text(
        job_toml(tmp_path, topic, kafka_bootstrap, state=f'[state]\nurl = "{BAD_STATE}"')
    )
    for cmd in ("cut", "plan", "run", "status", "reconcile"):
        res = runs(cmd, str(bad_state))
        assert res.returncode != 0, (cmd, res.stdout)
    bad_catalog_dir = tmp_path / "bad_catalog"
    (bad_catalog_dir / "warehouse").mkdir(parents=True)
    bad_catalog = bad_catalog_dir / "job.toml"
    bad_catalog.write_text(job_toml(bad_catalog_dir, topic, kafka_bootstrap, catalog=BAD_CATALOG))
    for cmd in ("run", "reconcile"):
        res = runs(cmd, str(bad_catalog))
        assert res.returncode != 0, (cmd, res.stdout)
    # the first cut checks the table before writing anything (a fresh store for a table that
    # already holds the job's commits is refused), so an unreachable catalog stops `run` there
    assert "no state store yet" in runs("status", str(bad_catalog), rc=2).stderr
    assert not (bad_catalog_dir / ".seamline" / "canary.db").exists()

    # failing: config errors on values that hold secrets
    text = job_toml(tmp_path, topic, kafka_bootstrap)
    broken = {
        "state_as_string": f'state = "postgresql://u:{CANARIES["userinfo"]}@h/db"\n' + text,
        "catalog_uri_list": text.replace(
            f'catalog_uri = "sqlite:///{tmp_path}/catalog.db"',
            f'catalog_uri = ["postgresql://u:{CANARIES["catalog"]}@h/c"]',
        ),
        "s3_key_wrong_type": text.replace(
            '"s3.secret-access-key" = "${SEAMLINE_CANARY_S3KEY}"',
            f'"s3.secret-access-key" = {{ v = "{CANARIES["s3key"]}" }}',
        ),
        "sasl_wrong_type": text.replace(
            'sasl_password = "${SEAMLINE_CANARY_SASL}"',
            f'sasl_password = ["{CANARIES["sasl"]}"]',
        ),
        "unencoded_at": text.replace(
            "[backfill]",
            f'[state]\nurl = "postgresql://app:x@{CANARIES["userinfo"]}@h/db"\n\n[backfill]',
        ),
    }
    for name, body in broken.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(body)
        for cmd in ("cut", "run", "status"):  # every command validates the job file alike
            res = runs(cmd, str(path))
            assert res.returncode == 3 and "key=" in res.stderr, (name, cmd, res.stderr)

    # grep everything
    for args, out, err in runs.outputs:
        assert not leaks(out) and not leaks(err), (args, leaks(out), leaks(err), err[-2000:])
        stderr_lines_are_json(err, args)
    state_db = tmp_path / ".seamline" / "canary.db"
    assert not leaks(dump_sqlite(state_db))
    assert not leaks(dump_sqlite(tmp_path / "catalog.db"))
    table_files = list(files_under(tmp_path / "warehouse"))
    assert any(p.name.endswith(".metadata.json") for p in table_files)
    for path in [*table_files, *files_under(tmp_path / ".seamline"), report]:
        assert not leaks(path.read_bytes()), path
    assert stat.S_IMODE(state_db.stat().st_mode) == 0o600
    assert stat.S_IMODE(report.stat().st_mode) == 0o640


def test_cut_and_dry_run_plan_import_no_user_code(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(2)
    produce(kafka_bootstrap, topic, 10)
    (tmp_path / "warehouse").mkdir()
    marker = tmp_path / "imported"
    module = f"canary_transform_{_TAG}"
    (tmp_path / f"{module}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\n"
        "def apply(table):\n    return table\n"
    )
    job = tmp_path / "job.toml"
    job.write_text(
        job_toml(tmp_path, topic, kafka_bootstrap).replace(
            "[backfill]", f'[transform]\nfunction = "{module}:apply"\n\n[backfill]'
        )
    )
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}

    def seamline(*args: str) -> None:
        res = subprocess.run(
            [SEAMLINE, *args, str(job)], capture_output=True, text=True, timeout=300,
            cwd=REPO, env=env,
        )  # fmt: skip
        assert res.returncode == 0, (args, res.stderr[-2000:])

    seamline("plan", "--dry-run")
    seamline("cut")
    assert not marker.exists()  # neither command ran the job's code
    seamline("plan")
    assert marker.exists()  # the commands that apply the transform do import it
