"""Exit codes of unexpected failures, as a user sees them: real subprocesses, broker and catalog.

An exception seamline did not raise on purpose exits 2 with one ``error:`` line naming the
command and what failed (the traceback only under ``--log-level debug``), never 1, which
means "ran and found differences". Each case below exited 1 with a traceback before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer

from coordinator.core.errors import ExitCode
from coordinator.testing.pytest_plugin import TopicFactory

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEAMLINE = str(Path(sys.executable).parent / "seamline")
CANARY = "Canary-Exit-7f3a"
UNREACHABLE = f"postgresql+psycopg2://seamline:{CANARY}@127.0.0.1:1/catalog"

TRANSFORM = '''
import pyarrow as pa

def nothing(table: pa.Table) -> None:
    return None  # not a table: the live consumer crashes on the first batch
'''


def job_toml(topic: str, bootstrap: str, tmp_path: Path, *, catalog: str, extra: str = "") -> str:
    return f"""
[job]
id = "exits"

[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"

[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"

[table]
format = "iceberg"
identifier = "db.orders"
catalog_uri = "{catalog}"
warehouse = "file://{tmp_path / 'wh'}"
{extra}
"""


def write_job(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exits.toml"
    path.write_text(text)
    return path


def seamline(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEAMLINE, *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{REPO}"},
    )


def assert_one_error_line(res: subprocess.CompletedProcess[str], code: int, *names: str) -> str:
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and CANARY not in res.stderr + res.stdout
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def produce_one(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, json.dumps({"order_id": 1, "ts": 1_700_000_000_000}).encode())
    assert producer.flush(30) == 0


def cut_with_good_catalog(tmp_path: Path, topic: str, bootstrap: str, extra: str = "") -> Path:
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    job = write_job(tmp_path, job_toml(topic, bootstrap, tmp_path, catalog=catalog, extra=extra))
    res = seamline("cut", str(job), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return job


def test_a_crash_in_live_exits_2_with_one_line_and_a_traceback_only_under_debug(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(1)
    (tmp_path / "exit_transform.py").write_text(TRANSFORM)
    extra = '[transform]\nfunction = "exit_transform:nothing"'
    job = cut_with_good_catalog(tmp_path, topic, kafka_bootstrap, extra)
    produce_one(kafka_bootstrap, topic)
    res = seamline("live", str(job), "--partitions", "0", cwd=tmp_path)
    line = assert_one_error_line(res, ExitCode.ERROR, "seamline live", "AttributeError")
    assert "stream/decode/transform.py" in line and "--log-level debug" in line
    debug = seamline("--log-level", "debug", "live", str(job), "--partitions", "0", cwd=tmp_path)
    assert debug.returncode == ExitCode.ERROR, debug.stderr
    assert "Traceback (most recent call last)" in debug.stderr
    last = debug.stderr.strip().splitlines()[-1]
    assert last.startswith("error: seamline live failed: unexpected AttributeError"), last


@pytest.mark.parametrize("command", ["live", "reconcile"])
def test_an_unreachable_catalog_exits_2_naming_the_failure_without_the_password(
    command: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(1)
    job = cut_with_good_catalog(tmp_path, topic, kafka_bootstrap)
    good = job.read_text()
    job.write_text(good.replace(f"sqlite:///{tmp_path / 'catalog.db'}", UNREACHABLE))
    res = seamline(command, str(job))
    assert_one_error_line(res, ExitCode.ERROR, f"seamline {command}", "OperationalError")
    debug = seamline("--log-level", "debug", command, str(job))
    assert debug.returncode == ExitCode.ERROR, debug.stderr
    assert "Traceback" in debug.stderr and CANARY not in debug.stderr + debug.stdout


@pytest.mark.parametrize("command", ["cut", "status"])
def test_a_state_url_with_an_unknown_driver_exits_2(
    command: str, tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(1)
    extra = f'[state]\nurl = "nosuchdriver://seamline:{CANARY}@127.0.0.1/state"'
    text = job_toml(topic, kafka_bootstrap, tmp_path, catalog="sqlite:///c.db", extra=extra)
    res = seamline(command, str(write_job(tmp_path, text)))
    assert_one_error_line(res, ExitCode.ERROR, f"seamline {command}", "nosuchdriver")


def test_a_metrics_port_out_of_range_is_a_config_error(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    job = cut_with_good_catalog(tmp_path, kafka_topic(1), kafka_bootstrap)
    res = seamline("live", str(job), "--metrics-port", "99999")
    assert_one_error_line(res, ExitCode.CONFIG, "key=--metrics-port", "found 99999")
