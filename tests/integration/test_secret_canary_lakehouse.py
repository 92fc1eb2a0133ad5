"""Secret canaries for ``[table] catalog`` and ``[table.storage]``: a REST catalog's bearer
``token`` and OAuth2 ``credential``, a URI password, and the S3 keys never leak.

Succeeding: the real ``seamline`` runs ``check/cut/plan/run/status/reconcile`` with
``--log-level DEBUG --log-json`` against the session's REST catalog server (its warehouse on the
S3 server) with a canary bearer token (the test server does not check it) and the S3 server's
real secret key (from ``${ENV}``, itself a canary: random per server). Failing: an unreachable
REST catalog whose URI holds a canary password, and config errors whose wrong-typed values
hold the credential, the session token and the secret key. Every output line, the state DB
and every object in the bucket are grepped: zero canaries.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from pyarrow import fs

from backfill.sinks.iceberg.rest_server.local import RestCatalogServer
from backfill.sinks.s3_server.local import S3Server
from coordinator.testing.pytest_plugin import TopicFactory
from tests.integration.test_secret_canary import (
    REPO,
    SEAMLINE,
    _closed_port,
    dump_sqlite,
    produce,
    stderr_lines_are_json,
)

pytestmark = pytest.mark.integration

_TAG = uuid.uuid4().hex[:8]
CANARIES = {n: f"cnry{_TAG}{n}" for n in ("token", "credential", "uripass", "s3tok")}


def _job(root: Path, topic: str, bootstrap: str, rest_uri: str, s3: S3Server) -> str:
    return f"""
[job]
id = "canary-lake"

[stream]
bootstrap = "{bootstrap}"
topic = "{topic}"

[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"
amount = "float64"

[table]
format = "iceberg"
identifier = "canary_{_TAG}.orders"
catalog = {{ type = "rest", uri = "{rest_uri}", token = "${{SEAMLINE_CANARY_TOKEN}}" }}
[table.storage]
endpoint = "{s3.endpoint}"
region = "{s3.region}"
access_key_id = "{s3.access_key_id}"
secret_access_key = "${{SEAMLINE_CANARY_S3SECRET}}"
path_style = true

[backfill]
slice_records = 10
concurrency = 2
max_attempts = 1
"""


def test_no_catalog_or_storage_secret_leaks(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    iceberg_rest_catalog: RestCatalogServer,
    s3_server: S3Server,
) -> None:
    secrets = {**CANARIES, "s3secret": s3_server.secret_access_key}
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEAMLINE_CANARY_TOKEN": CANARIES["token"],
           "SEAMLINE_CANARY_S3SECRET": s3_server.secret_access_key}  # fmt: skip
    outputs: list[tuple[tuple[str, ...], str, str]] = []

    def seamline(*args: str, rc: int | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [SEAMLINE, "--log-level", "DEBUG", "--log-json", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
        outputs.append((args, res.stdout, res.stderr))
        if rc is not None:
            assert res.returncode == rc, (args, res.returncode, res.stderr[-3000:])
        return res

    def leaks(data: str | bytes) -> list[str]:
        raw = data.encode() if isinstance(data, str) else data
        return [name for name, value in secrets.items() if value.encode() in raw]

    topic = kafka_topic(2)
    produce(kafka_bootstrap, topic, 30)
    text = _job(tmp_path, topic, kafka_bootstrap, iceberg_rest_catalog.uri, s3_server)
    good = tmp_path / "good.toml"
    good.write_text(text)
    assert "rest catalog" in seamline("check", str(good), rc=0).stdout
    seamline("cut", str(good), "--output", "json", rc=0)
    seamline("plan", str(good), "--output", "json", rc=0)
    run = seamline("run", str(good), "--output", "json", rc=0)
    assert json.loads(run.stdout)["exit_code"] == 0, run.stdout
    seamline("status", str(good), "--output", "json", rc=0)
    seamline("reconcile", str(good), "--output", "json", rc=0)

    # failing: the REST catalog is unreachable (its URI carries a password)
    down = f"http://app:{CANARIES['uripass']}@127.0.0.1:{_closed_port()}"
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "job.toml").write_text(text.replace(iceberg_rest_catalog.uri, down))
    for cmd in ("check", "run", "reconcile"):
        assert seamline(cmd, str(bad_dir / "job.toml")).returncode != 0, cmd

    # failing: config errors on values that hold secrets
    broken = {
        "credential_list": text.replace(
            'token = "${SEAMLINE_CANARY_TOKEN}"', f'credential = ["{CANARIES["credential"]}"]'
        ),
        "token_table": text.replace(
            'token = "${SEAMLINE_CANARY_TOKEN}"', f'token = {{ v = "{CANARIES["token"]}" }}'
        ),
        "session_token_list": text.replace(
            "path_style = true", f'path_style = true\nsession_token = ["{CANARIES["s3tok"]}"]'
        ),
        "secret_key_number_typo": text.replace(
            'secret_access_key = "${SEAMLINE_CANARY_S3SECRET}"',
            f'secret_acess_key = "{s3_server.secret_access_key}"',
        ),
        "uri_wrong_scheme": text.replace(
            iceberg_rest_catalog.uri, f"ftp://app:{CANARIES['uripass']}@127.0.0.1:1"
        ),
    }
    for name, body in broken.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(body)
        for cmd in ("check", "cut"):
            res = seamline(cmd, str(path))
            said = res.stdout + res.stderr  # check reports on stdout
            assert res.returncode == 3 and "key=" in said, (name, cmd, said)

    for args, out, err in outputs:
        assert not leaks(out) and not leaks(err), (args, leaks(out), leaks(err), err[-2000:])
        stderr_lines_are_json(err, args)
    assert not leaks(dump_sqlite(tmp_path / ".seamline" / "canary-lake.db"))
    bucket = str(iceberg_rest_catalog.warehouse).removeprefix("s3://").split("/")[0]
    s3 = fs.S3FileSystem(access_key=s3_server.access_key_id,
                         secret_key=s3_server.secret_access_key,
                         endpoint_override=s3_server.endpoint, scheme="http",
                         region=s3_server.region, force_virtual_addressing=False)  # fmt: skip
    objects = [i.path for i in s3.get_file_info(fs.FileSelector(f"{bucket}/warehouse/canary_"
                                                                f"{_TAG}", recursive=True))
               if i.type == fs.FileType.File
               and i.path.endswith((".json", ".avro", ".parquet"))]  # not folder markers
    assert any(p.endswith(".metadata.json") for p in objects), objects
    for key in objects:
        with s3.open_input_stream(key) as stream:
            assert not leaks(stream.read()), key
