"""Lifecycle of a local single-node Kafka broker (KRaft) run from Kafka's jars, no Docker.

A data dir holds everything: ``server.properties``, ``log4j2.properties``, ``broker.json``
(pid, ports, cluster id), ``data/`` (the Kafka log dirs) and ``logs/`` (broker logs). The
broker runs in its own session, so it outlives the process that started it. Starting again
with the same data dir reuses a running broker, or restarts it on the recorded ports keeping
its data; stopping sends SIGTERM, waits, then SIGKILL.
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
from pathlib import Path
from typing import Literal

from coordinator.core.errors import BrokerError
from stream.broker.probe import is_serving
from stream.broker.setup import (
    KAFKA_VERSION,
    LOOPBACK,
    Java,
    cds_options,
    ensure_kafka_jars,
    file_lock,
    find_java,
    free_port,
    java_command,
    log4j2_properties,
    new_cluster_id,
    port_is_free,
    promote_cds_archive,
    require_free_port,
    server_properties,
)

log = logging.getLogger(__name__)

STATE_FILE = "broker.json"
DEFAULT_START_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 30.0
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # brokers this process started, to reap

LocalState = Literal["serving", "not-serving", "stopped"]


@dataclasses.dataclass(frozen=True)
class LocalBroker:
    """What ``broker.json`` records about a local broker."""

    port: int
    controller_port: int
    cluster_id: str
    pid: int | None = None
    host: str = LOOPBACK
    started_at: str | None = None
    cds_dump: str | None = None  # where this JVM dumps its class archive at exit, if it does

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class LocalStatus:
    """The outcome of probing a data dir: serving, running but not serving, or stopped."""

    state: LocalState
    broker: LocalBroker | None


# --- state file -------------------------------------------------------------------------


def read_state(data_dir: Path) -> LocalBroker | None:
    """Read ``broker.json`` from ``data_dir`` (None when the broker was never started there).

    Raises:
        BrokerError: the file exists but is not a valid seamline broker record.
    """
    path = data_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        return LocalBroker(port=int(doc["port"]), controller_port=int(doc["controller_port"]),
                           cluster_id=str(doc["cluster_id"]), pid=doc.get("pid"),
                           host=str(doc.get("host", LOOPBACK)), started_at=doc.get("started_at"),
                           cds_dump=doc.get("cds_dump"))
    except (ValueError, KeyError, TypeError) as exc:
        raise BrokerError(f"unreadable broker record {path}: {exc}",
                          hint="stop any broker using this data dir and delete the file") from exc


def write_state(data_dir: Path, broker: LocalBroker) -> None:
    """Write ``broker.json`` atomically."""
    doc = dataclasses.asdict(broker) | {"bootstrap": broker.bootstrap,
                                        "kafka_version": KAFKA_VERSION}
    tmp = data_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, data_dir / STATE_FILE)


# --- processes --------------------------------------------------------------------------


def _props_path(data_dir: Path) -> Path:
    return data_dir / "server.properties"


def _cmdline(pid: int) -> str | None:
    """The command line of ``pid`` (None where /proc is unavailable, "" when it is gone)."""
    if not Path("/proc/self/cmdline").exists():
        return None
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def is_our_broker(pid: int, data_dir: Path) -> bool:
    """True when ``pid`` is alive and is the broker of ``data_dir`` (not a recycled pid)."""
    if not _alive(pid):
        return False
    cmdline = _cmdline(pid)
    return cmdline is None or str(_props_path(data_dir)) in cmdline


def broker_pids(data_dir: Path) -> list[int]:
    """Every live ``kafka.Kafka`` process started with this data dir's ``server.properties``."""
    needle = str(_props_path(data_dir))
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        cmdline = _cmdline(int(entry.name)) or ""
        if "kafka.Kafka" in cmdline and needle in cmdline and _alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; raise if the process survives."""
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if _wait_gone(pid, wait_s):
            break
        log.warning("broker pid=%d ignored %s for %.0fs", pid, sig.name, wait_s)
    if _alive(pid):
        raise BrokerError(f"broker pid={pid} is still running after SIGKILL",
                          hint=f"check it with: ps -o pid,stat,cmd -p {pid}")
    _CHILDREN.pop(pid, None)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        child = _CHILDREN.get(pid)
        if child is not None:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        elif time.monotonic() > deadline:
            return False
        else:
            time.sleep(0.1)
    return True


# --- start / stop / status --------------------------------------------------------------


def start_local(data_dir: Path, *, port: int | None = None,
                timeout: float = DEFAULT_START_TIMEOUT_S) -> LocalBroker:
    """Start (or reuse) the local broker of ``data_dir`` and wait until it serves metadata.

    Reuses a broker already running on this data dir; restarts a stopped one keeping its data
    and, when free, its recorded ports. ``port`` pins the client port (must be free).

    Raises:
        BrokerError: Java/Maven missing or too old, the port is taken, or the broker did not
            serve metadata within ``timeout`` seconds (the message names the log file).
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with file_lock(data_dir / ".lock"):
        running = _running(data_dir)
        if running is not None:
            return _reuse(running, data_dir, port, deadline)
        previous = read_state(data_dir)
        client_port, controller_port = _choose_ports(previous, port)  # cheapest checks first
        java = find_java()
        libs = ensure_kafka_jars()
        cds, dump = cds_options(libs, java)
        cluster_id = _prepare(data_dir, java, libs, client_port, controller_port,
                              cds if dump is None else [])
        broker = LocalBroker(port=client_port, controller_port=controller_port,
                             cluster_id=cluster_id, started_at=_now(),
                             cds_dump=str(dump) if dump else None)
        broker = dataclasses.replace(broker, pid=_launch(java, libs, data_dir, cds))
        write_state(data_dir, broker)
        _await_start(broker, data_dir, deadline, timeout)
        log.info("local Kafka broker pid=%s serving at %s", broker.pid, broker.bootstrap)
        return broker


def _running(data_dir: Path) -> LocalBroker | None:
    state = read_state(data_dir)
    if state is not None and state.pid is not None and is_our_broker(state.pid, data_dir):
        return state
    strays = broker_pids(data_dir)
    if strays:
        raise BrokerError(f"unrecorded broker process pid={strays[0]} uses data_dir={data_dir}",
                          hint=f"stop it with: seamline broker stop --data-dir {data_dir}")
    return None


def _reuse(running: LocalBroker, data_dir: Path, port: int | None,
           deadline: float) -> LocalBroker:
    if port is not None and port != running.port:
        raise BrokerError(f"a broker already runs on data_dir={data_dir}: expected port={port}, "
                          f"found port={running.port}",
                          hint="stop it first (seamline broker stop) or omit --port")
    _await_start(running, data_dir, deadline, max(0.0, deadline - time.monotonic()),
                 stop_on_timeout=False)
    log.info("reusing local Kafka broker pid=%s at %s", running.pid, running.bootstrap)
    return running


def _choose_ports(previous: LocalBroker | None, requested: int | None) -> tuple[int, int]:
    if requested is not None:
        require_free_port(requested)
        port = requested
    elif previous is not None and port_is_free(previous.port):
        port = previous.port
    else:
        port = free_port()
        if previous is not None:
            log.warning("recorded port %d is taken; the broker moves to port %d",
                        previous.port, port)
    if previous is not None and previous.controller_port != port \
            and port_is_free(previous.controller_port):
        return port, previous.controller_port
    return port, free_port(exclude=frozenset({port}))


def _prepare(data_dir: Path, java: Java, libs: Path, port: int, controller_port: int,
             cds: list[str]) -> str:
    """Write config files and format storage once; return the cluster id."""
    (data_dir / "logs").mkdir(exist_ok=True)
    props = server_properties(port=port, controller_port=controller_port, data_dir=data_dir)
    _props_path(data_dir).write_text(props)
    (data_dir / "log4j2.properties").write_text(log4j2_properties())
    meta = data_dir / "data" / "meta.properties"
    if meta.is_file():
        return _cluster_id_of(meta)
    cluster_id = new_cluster_id()
    cmd = java_command(java=java, libs=libs, data_dir=data_dir, main="kafka.tools.StorageTool",
                       args=["format", "-t", cluster_id, "-c", str(_props_path(data_dir))],
                       heap="256m", extra=cds)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise BrokerError(f"formatting Kafka storage in {data_dir / 'data'} failed "
                          f"(exit {done.returncode}): {(done.stdout + done.stderr)[-1500:]}",
                          hint="delete the data dir and retry, or check the Java install")
    return cluster_id


def _cluster_id_of(meta: Path) -> str:
    for line in meta.read_text().splitlines():
        if line.startswith("cluster.id="):
            return line.split("=", 1)[1].strip()
    raise BrokerError(f"no cluster.id in {meta}", hint="the data dir is damaged: delete it")


def _launch(java: Java, libs: Path, data_dir: Path, cds: list[str]) -> int:
    cmd = java_command(java=java, libs=libs, data_dir=data_dir, main="kafka.Kafka",
                       args=[str(_props_path(data_dir))], extra=cds)
    with (data_dir / "logs" / "stdout.log").open("ab") as out:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=data_dir,
                                 start_new_session=True)
    _CHILDREN[child.pid] = child
    return child.pid


def _await_start(broker: LocalBroker, data_dir: Path, deadline: float, timeout: float, *,
                 stop_on_timeout: bool = True) -> None:
    """Poll until the broker serves metadata; on failure name the log file (and stop it)."""
    assert broker.pid is not None
    while not is_serving(broker.bootstrap, timeout=min(5.0, max(1.0, timeout))):
        if not _alive(broker.pid):
            raise BrokerError(f"the Kafka broker pid={broker.pid} exited during start-up",
                              hint=f"see {data_dir / 'logs'}:\n{_log_tail(data_dir)}")
        if time.monotonic() > deadline:
            if stop_on_timeout:
                _terminate(broker.pid, DEFAULT_STOP_TIMEOUT_S)
            raise BrokerError(f"the Kafka broker pid={broker.pid} at {broker.bootstrap} did not "
                              f"serve metadata within {timeout:.0f}s",
                              hint=f"see {data_dir / 'logs' / 'server.log'}:\n"
                              f"{_log_tail(data_dir)}")
        time.sleep(0.2)


def _log_tail(data_dir: Path, lines: int = 12) -> str:
    parts = []
    for name in ("stdout.log", "server.log"):
        path = data_dir / "logs" / name
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts) or "(no log written)"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def stop_local(data_dir: Path, *, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> list[int]:
    """Stop the local broker of ``data_dir`` (and any stray one on it); return stopped pids.

    Stopping a stopped broker is a no-op. Data and ports stay recorded for the next start.

    Raises:
        BrokerError: a broker process survived SIGKILL.
    """
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        return []
    with file_lock(data_dir / ".lock"):
        state = read_state(data_dir)
        pids = set(broker_pids(data_dir))
        if state is not None and state.pid is not None and is_our_broker(state.pid, data_dir):
            pids.add(state.pid)
        for pid in sorted(pids):
            log.info("stopping local Kafka broker pid=%d", pid)
            _terminate(pid, timeout)
        if state is not None and state.cds_dump is not None:
            promote_cds_archive(Path(state.cds_dump))
        if state is not None and state.pid is not None:
            write_state(data_dir, dataclasses.replace(state, pid=None, cds_dump=None))
    return sorted(pids)


def local_status(data_dir: Path, *, timeout: float = 5.0) -> LocalStatus:
    """Probe the local broker of ``data_dir``: serving, running but not serving, or stopped."""
    data_dir = data_dir.expanduser().resolve()
    state = read_state(data_dir) if data_dir.is_dir() else None
    if state is None or state.pid is None or not is_our_broker(state.pid, data_dir):
        return LocalStatus("stopped", state)
    if is_serving(state.bootstrap, timeout=timeout):
        return LocalStatus("serving", state)
    return LocalStatus("not-serving", state)
