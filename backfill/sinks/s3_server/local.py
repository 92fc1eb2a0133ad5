"""Lifecycle of a local S3-compatible server: S3Proxy with a filesystem backend, no Docker.

Like the REST catalog (``backfill.sinks.iceberg.rest_server.local``): a data dir holds
``s3.json`` (pid, port, the generated access key pair; mode 0600), ``s3proxy.conf``,
``blobs/`` (one folder per bucket) and ``logs/server.log``. The endpoint is
``http://127.0.0.1:<port>``, requests are signed (AWS v2 or v4). The jars are resolved once by
Maven from ``pom.xml`` next to this file into ``~/.cache/seamline/s3proxy-<version>/libs``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Literal

from backfill.sinks.iceberg.rest_server.local import alive, launch, log_tail, terminate
from backfill.sinks.iceberg.rest_server.setup import SETUP_HINT, java_for_catalog
from coordinator.core.errors import ServiceError
from stream.broker.probe import split_bootstrap
from stream.broker.setup import (
    LOOPBACK,
    cache_root,
    ensure_maven_jars,
    file_lock,
    free_port,
    port_is_free,
)

log = logging.getLogger(__name__)

S3PROXY_VERSION = "2.9.0"
POM_PATH = Path(__file__).resolve().parent / "pom.xml"
STATE_FILE = "s3.json"
MAIN = "org.gaul.s3proxy.Main"
REGION = "us-east-1"
DEFAULT_START_TIMEOUT_S = 120.0
S3State = Literal["serving", "not-serving", "stopped"]


@dataclasses.dataclass(frozen=True)
class S3Server:
    """What ``s3.json`` records (the secret key never appears in ``repr``)."""

    port: int
    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    pid: int | None = None
    region: str = REGION

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL (path-style addressing)."""
        return f"http://{LOOPBACK}:{self.port}"

    def iceberg_properties(self) -> dict[str, str]:
        """Iceberg (Java S3FileIO) catalog properties reaching this server (secret included:
        for a 0600 properties file, never a log)."""
        return {"s3.endpoint": self.endpoint, "s3.access-key-id": self.access_key_id,
                "s3.secret-access-key": self.secret_access_key, "s3.path-style-access": "true",
                "client.region": self.region}  # fmt: skip

    def storage(self) -> dict[str, str | bool]:
        """A job's ``[table.storage]`` section for this server."""
        return {"endpoint": self.endpoint, "region": self.region,
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key, "path_style": True,
                # S3Proxy checks If-None-Match, then writes: not atomic (Lance commits)
                "commit_lock": "host"}


def read_state(data_dir: Path) -> S3Server | None:
    """Read ``s3.json`` (None when no server was ever started in ``data_dir``)."""
    path = data_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        return S3Server(port=int(doc["port"]), access_key_id=str(doc["access_key_id"]),
                        secret_access_key=str(doc["secret_access_key"]), pid=doc.get("pid"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ServiceError(f"unreadable S3 server record {path}: {type(exc).__name__}",
                           hint="stop any server using this data dir and delete the file") from exc


def _write_state(data_dir: Path, server: S3Server) -> None:
    tmp = data_dir / f".{STATE_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(dataclasses.asdict(server) | {"endpoint": server.endpoint},
                             indent=2) + "\n")
    os.replace(tmp, data_dir / STATE_FILE)


def _config(server: S3Server, data_dir: Path) -> str:
    return "\n".join([
        f"s3proxy.endpoint={server.endpoint}",
        "s3proxy.authorization=aws-v2-or-v4",
        f"s3proxy.identity={server.access_key_id}",
        f"s3proxy.credential={server.secret_access_key}",
        # Newer SDKs add x-amz-checksum-* headers (DeleteObjects always); S3Proxy 2.9 refuses
        # headers it does not know with 501 unless told to ignore them.
        "s3proxy.ignore-unknown-headers=true",
        "jclouds.provider=filesystem",
        f"jclouds.filesystem.basedir={data_dir / 'blobs'}",
        "",
    ])


# S3Proxy ships no logging configuration: logback's default logs every request at DEBUG.
_LOGBACK = """<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
"""


def is_serving(endpoint: str, timeout: float = 2.0) -> bool:
    """True when the endpoint accepts TCP connections and answers HTTP (any status)."""
    import socket

    host, port = split_bootstrap(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/")
    except OSError:
        return False


def _is_ours(server: S3Server, data_dir: Path) -> bool:
    if server.pid is None or not alive(server.pid):
        return False
    try:
        cmdline = (Path("/proc") / str(server.pid) / "cmdline").read_bytes()
    except OSError:
        return False
    return MAIN.encode() in cmdline and str(data_dir / "s3proxy.conf").encode() in cmdline


def start_s3(data_dir: Path, *, port: int | None = None,
             timeout: float = DEFAULT_START_TIMEOUT_S) -> S3Server:
    """Start (or reuse) the S3 server of ``data_dir``; wait until it answers HTTP.

    Raises:
        ServiceError: Java/Maven missing, or the server did not answer within ``timeout``.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with file_lock(data_dir / ".lock"):
        previous = read_state(data_dir)
        if previous is not None and _is_ours(previous, data_dir):
            _await(previous, data_dir, deadline)
            return previous
        chosen = port or (previous.port if previous and port_is_free(previous.port)
                          else free_port())
        server = previous or S3Server(port=chosen, access_key_id=f"seamline-{secrets.token_hex(4)}",
                                      secret_access_key=secrets.token_urlsafe(24))
        server = dataclasses.replace(server, port=chosen)
        java = java_for_catalog("the S3 server")
        libs = ensure_maven_jars(POM_PATH, cache_root() / f"s3proxy-{S3PROXY_VERSION}" / "libs",
                                 what=f"S3Proxy {S3PROXY_VERSION}", expect="s3proxy-*.jar",
                                 hint=SETUP_HINT, error=ServiceError)
        (data_dir / "blobs").mkdir(exist_ok=True)
        conf = data_dir / "s3proxy.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(_config(server, data_dir))
        (data_dir / "logback.xml").write_text(_LOGBACK)
        cmd = [java.path, "-Xmx256m", "-XX:TieredStopAtLevel=1",
               f"-Dlogback.configurationFile={data_dir / 'logback.xml'}",
               "-cp", f"{libs}{os.sep}*", MAIN, "--properties", str(conf)]
        server = dataclasses.replace(server, pid=launch(cmd, data_dir))
        _write_state(data_dir, server)
        _await(server, data_dir, deadline)
        log.info("local S3 server pid=%s serving at %s", server.pid, server.endpoint)
        return server


def _await(server: S3Server, data_dir: Path, deadline: float) -> None:
    assert server.pid is not None
    while not is_serving(server.endpoint):
        if not alive(server.pid):
            raise ServiceError(f"the S3 server pid={server.pid} exited during start-up",
                               hint=f"see {data_dir / 'logs'}:\n{log_tail(data_dir)}")
        if time.monotonic() > deadline:
            terminate(server.pid, 30.0)
            raise ServiceError(f"the S3 server pid={server.pid} at {server.endpoint} did not "
                               "answer in time", hint=f"see {data_dir / 'logs' / 'server.log'}")
        time.sleep(0.2)


def stop_s3(data_dir: Path, *, timeout: float = 30.0) -> list[int]:
    """Stop the S3 server of ``data_dir``; return the stopped pids (a no-op when stopped)."""
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        return []
    with file_lock(data_dir / ".lock"):
        state = read_state(data_dir)
        if state is None or state.pid is None or not _is_ours(state, data_dir):
            return []
        log.info("stopping local S3 server pid=%d", state.pid)
        terminate(state.pid, timeout)
        _write_state(data_dir, dataclasses.replace(state, pid=None))
        return [state.pid]


def s3_status(data_dir: Path) -> tuple[S3State, S3Server | None]:
    """Probe the S3 server of ``data_dir``: serving, running but not serving, or stopped."""
    data_dir = data_dir.expanduser().resolve()
    state = read_state(data_dir) if data_dir.is_dir() else None
    if state is None or not _is_ours(state, data_dir):
        return "stopped", state
    return ("serving" if is_serving(state.endpoint) else "not-serving"), state


def create_bucket(server: S3Server, bucket: str) -> str:
    """Create ``bucket`` on ``server`` (an existing one is kept); its ``s3://`` URI."""
    from pyarrow import fs

    s3 = fs.S3FileSystem(access_key=server.access_key_id, secret_key=server.secret_access_key,
                         endpoint_override=server.endpoint, scheme="http", region=server.region,
                         force_virtual_addressing=False, allow_bucket_creation=True)
    s3.create_dir(bucket)
    return f"s3://{bucket}"
