"""Lifecycle of a local Iceberg REST catalog server, no Docker (like ``stream.broker.local``).

A data dir holds everything: ``catalog.json`` (pid, port), ``catalog.db`` (the JDBC catalog
behind the REST API, SQLite), ``warehouse/`` (table files) and ``logs/server.log``. The server
runs in its own session and outlives the process that started it. Starting again with the same
data dir reuses a running server or restarts a stopped one on its recorded port when free;
stopping sends SIGTERM, waits, then SIGKILL. The server binds 127.0.0.1 only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

from backfill.sinks.iceberg.rest_server.setup import (
    LAUNCHER_MAIN,
    catalog_command,
    ensure_catalog_jars,
    ensure_launcher,
    java_for_catalog,
)
from coordinator.core.errors import ServiceError
from stream.broker.setup import LOOPBACK, file_lock, free_port, port_is_free, require_free_port

log = logging.getLogger(__name__)

STATE_FILE = "catalog.json"
DEFAULT_START_TIMEOUT_S = 120.0
DEFAULT_STOP_TIMEOUT_S = 30.0
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # servers this process started, to reap

CatalogState = Literal["serving", "not-serving", "stopped"]


@dataclasses.dataclass(frozen=True)
class RestCatalogServer:
    """What ``catalog.json`` records about a local REST catalog server."""

    port: int
    pid: int | None = None
    host: str = LOOPBACK
    started_at: str | None = None
    warehouse: str | None = None  # the server's default warehouse (file:// or s3://)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ServiceError(f"port={self.port}: expected 1-65535")

    @property
    def uri(self) -> str:
        """The catalog URI for pyiceberg (``type = "rest"``)."""
        return f"http://{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class CatalogStatus:
    """The outcome of probing a data dir: serving, running but not serving, or stopped."""

    state: CatalogState
    server: RestCatalogServer | None


def read_state(data_dir: Path) -> RestCatalogServer | None:
    """Read ``catalog.json`` (None when no server was ever started in ``data_dir``)."""
    path = data_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        return RestCatalogServer(port=int(doc["port"]), pid=doc.get("pid"),
                                 host=str(doc.get("host", LOOPBACK)),
                                 started_at=doc.get("started_at"),
                                 warehouse=doc.get("warehouse"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ServiceError(f"unreadable catalog record {path}: {exc}",
                           hint="stop any catalog using this data dir and delete the file") from exc


def _write_state(data_dir: Path, server: RestCatalogServer) -> None:
    doc = dataclasses.asdict(server) | {"uri": server.uri}
    tmp = data_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, data_dir / STATE_FILE)


def is_serving(uri: str, timeout: float = 2.0) -> bool:
    """True when ``GET {uri}/v1/config`` answers 200 with the catalog's config."""
    try:
        with urllib.request.urlopen(f"{uri}/v1/config", timeout=timeout) as resp:  # noqa: S310
            return resp.status == 200 and b"defaults" in resp.read()
    except (OSError, urllib.error.URLError, ValueError):
        return False


def alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie (our own children are polled and reaped)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def is_our_server(pid: int, data_dir: Path) -> bool:
    """True when ``pid`` is alive and is the catalog server of ``data_dir`` (no recycled pid)."""
    if not alive(pid):
        return False
    try:
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    text = cmdline.decode(errors="replace")
    return LAUNCHER_MAIN in text and str(data_dir / "catalog.db") in text


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; raise ``ServiceError`` if it survives."""
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while alive(pid) and time.monotonic() < deadline:
            child = _CHILDREN.get(pid)
            if child is not None:
                try:
                    child.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    break
            else:
                time.sleep(0.1)
        if not alive(pid):
            break
    if alive(pid):
        raise ServiceError(f"catalog server pid={pid} is still running after SIGKILL",
                           hint=f"check it with: ps -o pid,stat,cmd -p {pid}")
    _CHILDREN.pop(pid, None)


def _running(data_dir: Path) -> RestCatalogServer | None:
    state = read_state(data_dir)
    if state is not None and state.pid is not None and is_our_server(state.pid, data_dir):
        return state
    return None


def _choose_port(previous: RestCatalogServer | None, requested: int | None) -> int:
    if requested is not None:
        require_free_port(requested)
        return requested
    if previous is not None and port_is_free(previous.port):
        return previous.port
    return free_port()


def start_catalog(
    data_dir: Path, *, port: int | None = None, warehouse: str | None = None,
    properties: dict[str, str] | None = None, timeout: float = DEFAULT_START_TIMEOUT_S,
) -> RestCatalogServer:
    """Start (or reuse) the REST catalog of ``data_dir`` and wait until it serves its config.

    ``warehouse`` defaults to ``data_dir/warehouse`` (files); an ``s3://`` warehouse needs the
    ``s3.*`` FileIO ``properties`` (endpoint, keys: written to a 0600 file, never to a command
    line or a log), e.g. :meth:`backfill.sinks.s3_server.local.S3Server.iceberg_properties`.

    Raises:
        ServiceError: Java/Maven/javac missing, the port is taken, a running server has another
            port or warehouse, or the server did not serve ``/v1/config`` within ``timeout``
            seconds (the message names the log file).
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with file_lock(data_dir / ".lock"):
        running = _running(data_dir)
        if running is not None:
            _check_reuse(running, data_dir, port, warehouse)
            _await_start(running, data_dir, deadline, stop_on_timeout=False)
            return running
        previous = read_state(data_dir)
        chosen = _choose_port(previous, port)
        java = java_for_catalog()
        libs = ensure_catalog_jars()
        classes = ensure_launcher(libs)
        # a restart keeps the recorded warehouse and its properties unless told otherwise
        wh = warehouse or (previous.warehouse if previous else None)
        wh = wh or (data_dir / "warehouse").as_uri()
        props_file = (_write_properties(data_dir, properties) if properties is not None
                      else _kept_properties(data_dir, wh))  # fmt: skip
        cmd = catalog_command(java, libs, classes, port=chosen, data_dir=data_dir, warehouse=wh,
                              properties_file=props_file)  # fmt: skip
        server = RestCatalogServer(port=chosen, started_at=_now(), warehouse=wh,
                                   pid=_launch(cmd, data_dir))  # fmt: skip
        _write_state(data_dir, server)
        _await_start(server, data_dir, deadline)
        log.info("local REST catalog pid=%s serving at %s", server.pid, server.uri)
        return server


def _check_reuse(
    running: RestCatalogServer, data_dir: Path, port: int | None, warehouse: str | None
) -> None:
    if port is not None and port != running.port:
        raise ServiceError(
            f"a catalog already runs on data_dir={data_dir}: expected port={port}, "
            f"found port={running.port}", hint="stop it first or omit --port")  # fmt: skip
    if warehouse is not None and warehouse != running.warehouse:
        raise ServiceError(
            f"a catalog already runs on data_dir={data_dir}: expected warehouse={warehouse}, "
            f"found warehouse={running.warehouse}", hint="stop it first or omit --warehouse",
        )  # fmt: skip


def _write_properties(data_dir: Path, properties: dict[str, str]) -> Path | None:
    """``catalog.properties`` (mode 0600) for the launcher; None when there are none."""
    path = data_dir / "catalog.properties"
    if not properties:
        path.unlink(missing_ok=True)
        return None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        for key, value in sorted(properties.items()):
            out.write(f"{_escape(key)}={_escape(value)}\n")
    return path


def _kept_properties(data_dir: Path, warehouse: str) -> Path | None:
    """The properties file of an earlier start, kept for an ``s3://`` warehouse."""
    path = data_dir / "catalog.properties"
    if warehouse.startswith("s3://") and path.is_file():
        return path
    path.unlink(missing_ok=True)
    return None


def _escape(text: str) -> str:
    """A value as java.util.Properties reads it back (backslash, separators, line ends)."""
    for raw, esc in (("\\", "\\\\"), ("=", "\\="), (":", "\\:"), ("\n", "\\n"),
                     ("#", "\\#"), ("!", "\\!")):  # fmt: skip
        text = text.replace(raw, esc)
    return text.replace(" ", "\\ ") if text.startswith(" ") else text


def _launch(cmd: list[str], data_dir: Path) -> int:
    (data_dir / "warehouse").mkdir(exist_ok=True)
    env = {**os.environ, "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
           "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED"}  # fmt: skip
    return launch(cmd, data_dir, env)


def launch(cmd: list[str], data_dir: Path, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` in its own session, output to ``data_dir/logs/server.log``; its pid."""
    (data_dir / "logs").mkdir(exist_ok=True)
    with (data_dir / "logs" / "server.log").open("ab") as out:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=data_dir, start_new_session=True,
                                 env=env)
    _CHILDREN[child.pid] = child
    return child.pid


def _await_start(server: RestCatalogServer, data_dir: Path, deadline: float, *,
                 stop_on_timeout: bool = True) -> None:
    assert server.pid is not None
    while not is_serving(server.uri):
        if not alive(server.pid):
            raise ServiceError(f"the REST catalog pid={server.pid} exited during start-up",
                               hint=f"see {data_dir / 'logs' / 'server.log'}:\n"
                               f"{log_tail(data_dir)}")
        if time.monotonic() > deadline:
            if stop_on_timeout:
                terminate(server.pid, DEFAULT_STOP_TIMEOUT_S)
            raise ServiceError(f"the REST catalog pid={server.pid} at {server.uri} did not serve "
                               "/v1/config in time", hint=f"see {data_dir / 'logs'}:\n"
                               f"{log_tail(data_dir)}")
        time.sleep(0.2)


def log_tail(data_dir: Path, lines: int = 12) -> str:
    path = data_dir / "logs" / "server.log"
    if not path.is_file():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def stop_catalog(data_dir: Path, *, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> list[int]:
    """Stop the REST catalog of ``data_dir``; return the stopped pids (a no-op when stopped)."""
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        return []
    with file_lock(data_dir / ".lock"):
        state = read_state(data_dir)
        if state is None or state.pid is None or not is_our_server(state.pid, data_dir):
            return []
        log.info("stopping local REST catalog pid=%d", state.pid)
        terminate(state.pid, timeout)
        _write_state(data_dir, dataclasses.replace(state, pid=None))
        return [state.pid]


def kill_catalog(data_dir: Path) -> int | None:
    """``kill -9`` the REST catalog of ``data_dir`` (a fault drill: no shutdown hook runs, its
    SQLite backing store is left as the kill found it) and reap it; returns the killed pid, or
    ``None`` when none was running. :func:`start_catalog` restarts it on the same data dir
    and, while it is free, the same port."""
    data_dir = data_dir.expanduser().resolve()
    with file_lock(data_dir / ".lock"):
        state = read_state(data_dir)
        if state is None or state.pid is None or not is_our_server(state.pid, data_dir):
            return None
        os.kill(state.pid, signal.SIGKILL)
        child = _CHILDREN.pop(state.pid, None)
        if child is not None:
            child.wait(10.0)
        else:
            deadline = time.monotonic() + 10.0
            while alive(state.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        log.info("killed local REST catalog pid=%d (SIGKILL)", state.pid)
        return state.pid


def catalog_status(data_dir: Path, *, timeout: float = 5.0) -> CatalogStatus:
    """Probe the REST catalog of ``data_dir``: serving, running but not serving, or stopped."""
    data_dir = data_dir.expanduser().resolve()
    state = read_state(data_dir) if data_dir.is_dir() else None
    if state is None or state.pid is None or not is_our_server(state.pid, data_dir):
        return CatalogStatus("stopped", state)
    if is_serving(state.uri, timeout=timeout):
        return CatalogStatus("serving", state)
    return CatalogStatus("not-serving", state)
