"""Secrets and trust in the job file, the state store, metrics and worker logging.

Config errors never echo a secret value; URLs whose password holds an unencoded '@' are
refused; a Lance uri cannot point at '/' or a foreign directory; the state DB and reports are
private; metrics bind to loopback; workers and Faust log through the redacting handler.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from coordinator.core.errors import ConfigError, StateError
from coordinator.core.jobspec import load_job
from coordinator.core.logs import JsonFormatter
from coordinator.state.base import StoreBase
from stream.live.metrics import LiveMetrics

CANARY = "CNRY-5e1d"

BASE = """
[job]
id = "orders"

[stream]
bootstrap = "127.0.0.1:39092"
topic = "orders"

[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"

[table]
format = "lance"
uri = "out/orders.lance"
"""

ICEBERG = BASE.replace(
    'format = "lance"\nuri = "out/orders.lance"',
    'format = "iceberg"\nidentifier = "db.orders"\ncatalog_uri = "sqlite:///cat.db"',
)


def error_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f'state = "postgresql://u:{CANARY}@h/db"\n' + BASE, "key=state"),
        (
            ICEBERG.replace('catalog_uri = "sqlite:///cat.db"', f'catalog_uri = ["{CANARY}"]'),
            "key=table.catalog_uri",
        ),
        (
            ICEBERG + f'[table.catalog_properties]\n"s3.secret-access-key" = ["{CANARY}"]\n',
            "key=table.catalog_properties.s3.secret-access-key",
        ),
        (ICEBERG + f'[table.catalog_properties]\n"x" = {{ a = "{CANARY}" }}\n', "key=table"),
        (
            BASE.replace('topic = "orders"\n', f'topic = "orders"\n[stream.security]\n'
                         f'sasl_mechanism = "{CANARY}"\nsasl_password = 5\n'),
            "key=stream.security.sasl_mechanism",
        ),
        (
            BASE.replace('topic = "orders"\n', 'topic = "orders"\n[stream.security]\n'
                         f'protocol = "{CANARY}"\n'),
            "key=stream.security.protocol",
        ),
        (BASE + f'[state]\nurl = ["{CANARY}"]\n', "key=state.url"),
    ],
)
def test_config_type_errors_never_echo_secret_values(tmp_path: Path, text: str, key: str) -> None:
    msg = error_of(tmp_path, text)
    assert key in msg and CANARY not in msg, msg


def test_env_values_are_never_echoed_wherever_they_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEAMLINE_TEST_TOPIC", f"bad/{CANARY}")
    msg = error_of(tmp_path, BASE.replace('topic = "orders"', 'topic = "${SEAMLINE_TEST_TOPIC}"'))
    assert "key=stream.topic" in msg and CANARY not in msg, msg


def test_value_errors_say_found_once_and_never_echo_the_whole_fields_table(
    tmp_path: Path,
) -> None:
    msg = error_of(tmp_path, BASE.replace('ts = "timestamp_ms"', 'ts = "timestamp_zz"'))
    assert msg.count("found") == 1 and "'timestamp_zz'" in msg, msg
    assert "order_id" not in msg  # the rest of [schema.fields] is not echoed
    topic = error_of(tmp_path, BASE.replace('topic = "orders"', 'topic = "a/b"'))
    assert topic.count("found") == 1 and "'a/b'" in topic, topic


@pytest.mark.parametrize(
    "text",
    [
        BASE + f'[state]\nurl = "postgresql+psycopg://app:pa@{CANARY}@db.internal/x"\n',
        BASE + f'[state]\nurl = "postgresql://app:pa/{CANARY}@db.internal/x"\n',
        ICEBERG.replace("sqlite:///cat.db", f"postgresql://app:p@{CANARY}@db.internal/cat"),
    ],
)
def test_unencoded_at_in_a_url_password_is_refused_with_a_hint(tmp_path: Path, text: str) -> None:
    msg = error_of(tmp_path, text)
    assert "%40" in msg and CANARY not in msg and "db.internal" not in msg, msg


def test_encoded_and_sqlite_urls_with_at_signs_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(BASE + '[state]\nurl = "postgresql+psycopg://app:pa%40ss@db/x"\n')
    assert load_job(path).state_url().endswith("@db/x")
    path.write_text(BASE + f'[state]\nurl = "sqlite:///{tmp_path}/a@b/state.db"\n')
    assert "a@b" in load_job(path).state_url()


def test_lance_uri_of_root_or_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    assert "key=table.uri" in error_of(tmp_path, BASE.replace('"out/orders.lance"', '"/"'))
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    msg = error_of(tmp_path, BASE.replace('"out/orders.lance"', '"home"'))
    assert "key=table.uri" in msg and "Lance dataset" in msg, msg
    assert (foreign / "notes.txt").read_text() == "mine"


def test_lance_uri_may_be_new_empty_or_an_existing_dataset(tmp_path: Path) -> None:
    import lance
    import pyarrow as pa

    path = tmp_path / "job.toml"
    for uri in ("out/orders.lance", "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        path.write_text(BASE.replace('"out/orders.lance"', f'"{uri}"'))
        assert load_job(path).table.uri == uri
    lance.write_dataset(pa.table({"a": [1]}), str(tmp_path / "ds.lance"))
    path.write_text(BASE.replace('"out/orders.lance"', '"ds.lance"'))
    assert load_job(path).table.uri == "ds.lance"


def test_state_db_is_created_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "state" / "s.db"
    with StoreBase(f"sqlite:///{db}") as store:
        store.ensure_job("orders")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    wal = Path(f"{db}-wal")
    assert not wal.exists() or stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_reports_are_written_0640_even_over_a_wider_file(tmp_path: Path) -> None:
    from coordinator.core.logs import write_private

    report = tmp_path / "report.html"
    report.write_text("old")
    report.chmod(0o666)
    write_private(report, "<html>new</html>")
    assert stat.S_IMODE(report.stat().st_mode) == 0o640 and report.read_text().endswith("l>")


def test_state_errors_never_show_a_query_password() -> None:
    with socket.socket() as s:  # a closed local port: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = (
        f"postgresql+psycopg://app@127.0.0.1:{port}/db?connect_timeout=2&password={CANARY}"
        f"&sslpassword={CANARY}&passfile=/tmp/{CANARY}"
    )
    with pytest.raises(StateError) as info:
        StoreBase(url)
    assert "127.0.0.1" in str(info.value) and CANARY not in str(info.value), info.value


def _listen_address(port: int) -> str:
    """The local address a TCP socket listens on for ``port``, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":
            return socket.inet_ntoa(bytes.fromhex(addr)[::-1])
    raise AssertionError(f"nothing listens on port={port}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_bind_loopback_by_default_and_the_host_flag_changes_it() -> None:
    port = _free_port()
    LiveMetrics("orders", CollectorRegistry()).serve(port)
    assert _listen_address(port) == "127.0.0.1"
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    assert b"seamline_live_records" in body
    other = _free_port()
    LiveMetrics("orders", CollectorRegistry()).serve(other, "0.0.0.0")
    assert _listen_address(other) == "0.0.0.0"
    from coordinator.cli.live import live

    flag = next(p for p in live.params if p.name == "metrics_host")
    assert flag.default == "127.0.0.1"


def test_faust_worker_keeps_the_redacting_json_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    import faust

    from stream.live.faust_engine import RedactingWorker

    monkeypatch.setenv("SEAMLINE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("SEAMLINE_LOG_JSON", "1")
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        app = faust.App("seamline-test-logging", broker="kafka://127.0.0.1:1", web_enabled=False)
        worker = RedactingWorker(app, loglevel="INFO", quiet=True, redirect_stdouts=False)
        worker._setup_logging()  # what mode runs when the worker starts
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_a_spawned_worker_logs_json_redacted_like_its_coordinator(tmp_path: Path) -> None:
    """The runner's pool is ``spawn``: a worker inherits nothing but the environment."""
    script = f"""
import concurrent.futures as cf, logging, multiprocessing
from coordinator.core.logs import configure_logging

def work() -> None:
    from backfill.executor import execute_slice
    try:
        execute_slice(None, None, None)  # the entry installs logging, then fails on None
    except Exception:
        pass
    logging.getLogger("w").warning("connecting postgresql://u:{CANARY}@h/db password={CANARY}")

if __name__ == "__main__":
    configure_logging("INFO", json_lines=True)
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(work).result()
"""
    (tmp_path / "w.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("SEAMLINE_LOG_LEVEL", None)
    env.pop("SEAMLINE_LOG_JSON", None)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "w.py")], capture_output=True, text=True, env=env,
        timeout=120, check=True,
    )
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert CANARY not in done.stderr, done.stderr
    assert any(json.loads(ln)["logger"] == "w" for ln in lines), done.stderr
    assert all(ln.startswith("{") for ln in lines), done.stderr


def test_text_logs_redact_tracebacks_too() -> None:
    from coordinator.core.logs import RedactingFormatter

    try:
        raise RuntimeError(f"connect failed: postgresql://u:{CANARY}@h/db")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "boom", None, sys.exc_info())
    assert CANARY not in RedactingFormatter().format(record)
    assert CANARY not in JsonFormatter().format(record)


def test_an_uncaught_error_is_one_redacted_json_record() -> None:
    code = (
        "from coordinator.core.logs import configure_logging\n"
        "configure_logging('INFO', json_lines=True)\n"
        f"raise RuntimeError('boom postgresql://u:{CANARY}@h/db password={CANARY}')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode != 0 and CANARY not in done.stderr, done.stderr
    doc = json.loads(done.stderr)
    assert doc["level"] == "CRITICAL" and "RuntimeError" in doc["exc"]
