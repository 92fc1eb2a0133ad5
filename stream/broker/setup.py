"""What a local Kafka broker needs before it can start: Java, the jars, free ports, config files.

The jars are resolved once by Maven from ``stream/broker/pom.xml`` into a cache outside the
work tree (``~/.cache/seamline/kafka-<version>/libs``; ``SEAMLINE_CACHE_DIR`` overrides the
root). Resolution goes to a temporary directory that is renamed into place only when complete,
under a file lock, so a half-downloaded cache is never used and two processes never download
at once.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from coordinator.core.errors import BrokerError, SeamlineError

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
MIN_JAVA = 17
KAFKA_DIR = Path(__file__).resolve().parent
POM_PATH = KAFKA_DIR / "pom.xml"
LOG4J2_TEMPLATE = KAFKA_DIR / "log4j2.properties"
LOOPBACK = "127.0.0.1"
_COMPLETE_MARKER = ".seamline-complete"
_MAVEN_TIMEOUT_S = 900.0

JAVA_HINT = (
    "install a JDK 17 or newer: apt-get install openjdk-17-jre-headless "
    "(or set JAVA_HOME), or set KAFKA_BOOTSTRAP=host:port to use an existing broker"
)
MAVEN_HINT = (
    "install Maven to fetch the Kafka jars once: apt-get install maven, "
    "or set KAFKA_BOOTSTRAP=host:port to use an existing broker"
)


# --- Java -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Java:
    """A Java runtime: its executable, major version and a short id of its exact build."""

    path: str
    major: int
    build: str


def find_java() -> Java:
    """Return the Java to use (``$JAVA_HOME/bin/java`` first, then ``PATH``).

    Raises:
        BrokerError: no Java found, or it is older than 17.
    """
    java = _java_candidate()
    if java is None:
        raise BrokerError("no java executable found on PATH (and JAVA_HOME unset)",
                          hint=JAVA_HINT)
    text = _java_version_text(java)
    major = java_major_version(text)
    if major < MIN_JAVA:
        raise BrokerError(f"Java is too old: expected {MIN_JAVA} or newer, found {major} "
                          f"at {java}", hint=JAVA_HINT)
    build = hashlib.sha256(f"{java}\n{text}".encode()).hexdigest()[:12]
    return Java(path=java, major=major, build=build)


def _java_candidate() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def _java_version_text(java: str) -> str:
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"could not run {java} -version: {exc}", hint=JAVA_HINT) from exc
    return done.stderr + done.stdout


def java_major_version(version_text: str) -> int:
    """Parse the major version out of ``java -version`` output.

    >>> java_major_version('openjdk version "17.0.15" 2025-04-15')
    17
    >>> java_major_version('java version "1.8.0_402"')
    8
    """
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if match is None:
        raise BrokerError(f"cannot read the Java version from: {version_text.strip()[:200]!r}",
                          hint=JAVA_HINT)
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


# --- Jars -------------------------------------------------------------------------------


def cache_root() -> Path:
    """The root of seamline's download cache (``SEAMLINE_CACHE_DIR`` or ``~/.cache/seamline``)."""
    configured = os.environ.get("SEAMLINE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "seamline"


def ensure_kafka_jars() -> Path:
    """Return a directory holding every jar the broker needs, resolving them once with Maven.

    Raises:
        BrokerError: Maven is missing or the resolution failed.
    """
    return ensure_maven_jars(POM_PATH, cache_root() / f"kafka-{KAFKA_VERSION}" / "libs",
                             what=f"Kafka {KAFKA_VERSION}", expect="kafka_2.13-*.jar",
                             hint=MAVEN_HINT)


def ensure_maven_jars(pom: Path, libs: Path, *, what: str, expect: str, hint: str,
                      error: type[SeamlineError] = BrokerError) -> Path:
    """Resolve ``pom``'s dependencies once into ``libs`` (locked, renamed into place).

    ``expect`` is a glob one resolved jar must match; ``what`` names the jars in messages.

    Raises:
        SeamlineError: (of class ``error``) Maven is missing or the resolution failed.
    """
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if _is_complete(libs, digest):
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(libs.parent / ".lock"):
        if not _is_complete(libs, digest):  # another process may have finished meanwhile
            _resolve_into(_MavenJob(pom, libs, what, expect, hint, error), digest)
    return libs


@dataclasses.dataclass(frozen=True)
class _MavenJob:
    pom: Path
    libs: Path
    what: str
    expect: str
    hint: str
    error: type[SeamlineError]


def _is_complete(libs: Path, digest: str) -> bool:
    marker = libs / _COMPLETE_MARKER
    return marker.is_file() and marker.read_text().strip() == digest


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for the lock %s held by another seamline process", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _resolve_into(job: _MavenJob, digest: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise job.error(f"Maven (mvn) is not on PATH and the {job.what} jars are not cached in "
                        f"{job.libs}", hint=job.hint)
    staging = Path(tempfile.mkdtemp(prefix=".libs-", dir=job.libs.parent))
    try:
        log.info("resolving %s jars with Maven into %s", job.what, job.libs)
        with file_lock(cache_root() / ".maven.lock"):  # one Maven run at a time shares ~/.m2
            _run_maven(mvn, staging, job)
        (staging / "jars" / _COMPLETE_MARKER).write_text(digest + "\n")
        if job.libs.exists():
            shutil.rmtree(job.libs)
        os.rename(staging / "jars", job.libs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run_maven(mvn: str, staging: Path, job: _MavenJob) -> None:
    work = staging / "project"
    work.mkdir()
    shutil.copyfile(job.pom, work / "pom.xml")  # Maven may write target/: keep it out of the repo
    cmd = [mvn, "-q", "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
           f"-DoutputDirectory={staging / 'jars'}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_MAVEN_TIMEOUT_S,
                              check=False, cwd=work)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise job.error(f"Maven could not resolve the {job.what} jars: {exc}",
                        hint="check network access to Maven Central and retry") from exc
    if done.returncode != 0 or not any((staging / "jars").glob(job.expect)):
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise job.error(f"Maven failed to resolve the {job.what} jars (exit {done.returncode}): "
                        f"{tail}", hint="check network access to Maven Central "
                        "(or ~/.m2/settings.xml mirrors) and retry")


# --- Ports ------------------------------------------------------------------------------


def free_port(exclude: frozenset[int] = frozenset()) -> int:
    """Return a loopback TCP port that is free right now (not one of ``exclude``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise BrokerError("could not find a free loopback port after 50 tries")


def port_is_free(port: int) -> bool:
    """True when a listener could bind ``127.0.0.1:port`` now (as Kafka would, SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def require_free_port(port: int) -> None:
    """Raise a clear error when a requested port is taken.

    Raises:
        BrokerError: ``127.0.0.1:port`` is already bound by another process.
    """
    if not port_is_free(port):
        raise BrokerError(f"port {LOOPBACK}:{port} is already in use",
                          hint="stop the process listening there, or pass another --port "
                          "(omit --port to pick a free one)")


# --- Config files -----------------------------------------------------------------------


def new_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding (22 characters).

    An id starting with ``-`` is drawn again, as Kafka's own ``Uuid.randomUuid`` does:
    ``kafka-storage format -t -abc…`` would read it as an option and refuse to format
    (one start in 64 failed that way).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def server_properties(*, port: int, controller_port: int, data_dir: Path) -> str:
    """Render ``server.properties`` for a single-node KRaft broker+controller on loopback."""
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "data"),
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "5",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "5",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    body = "\n".join(f"{key}={value}" for key, value in lines.items())
    return f"# Written by seamline on every start; edits are overwritten.\n{body}\n"


def log4j2_properties() -> str:
    """The log4j2 configuration copied into the data dir (logs go to ``kafka.logs.dir``)."""
    return LOG4J2_TEMPLATE.read_text()


def java_command(*, java: Java, libs: Path, data_dir: Path, main: str, args: list[str],
                 heap: str = "512m", extra: list[str] | None = None) -> list[str]:
    """The JVM command line running ``main`` with the Kafka jars and our log set-up.

    The JIT stops at C1 (a dev broker starts ~30% faster); ``SEAMLINE_KAFKA_JVM_OPTS`` is
    appended last, so it can override any option (e.g. ``-XX:TieredStopAtLevel=4``).
    """
    return [
        java.path, f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={data_dir / 'logs'}",
        f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
        *(extra or []), *shlex.split(os.environ.get("SEAMLINE_KAFKA_JVM_OPTS", "")),
        "-cp", f"{libs}{os.sep}*", main, *args,
    ]


# --- Class-data sharing: a dynamic CDS archive of the broker's classes -------------------
# The first broker dumps the classes it loaded at exit into a uniquely named ``.part`` file;
# once that JVM is gone the file is renamed to the archive every later start maps (about
# 1.5 s faster). A stale or mismatched archive is ignored by the JVM (-Xshare:auto).

_PART_SETTLE_S = 60.0


def cds_options(libs: Path, java: Java) -> tuple[list[str], Path | None]:
    """JVM options using the CDS archive, or dumping one; and the dump path to promote later."""
    cds_dir = libs.parent / "cds"
    archive = cds_dir / f"kafka-{java.build}.jsa"
    if not archive.is_file():
        _promote_settled_parts(cds_dir, archive)
    if archive.is_file():
        return [f"-XX:SharedArchiveFile={archive}"], None
    cds_dir.mkdir(parents=True, exist_ok=True)
    part = cds_dir / f"kafka-{java.build}.{uuid.uuid4().hex[:8]}.jsa.part"
    return [f"-XX:ArchiveClassesAtExit={part}"], part


def promote_cds_archive(part: Path) -> None:
    """Call once the JVM that dumps to ``part`` has exited: make it the archive (first wins)."""
    if not part.is_file():
        return
    archive = part.with_name(part.name.split(".", 1)[0] + ".jsa")
    if archive.is_file():
        part.unlink(missing_ok=True)
    else:
        os.replace(part, archive)


def _promote_settled_parts(cds_dir: Path, archive: Path) -> None:
    for part in sorted(cds_dir.glob(f"{archive.stem}.*.jsa.part")):
        with contextlib.suppress(OSError):
            if time.time() - part.stat().st_mtime > _PART_SETTLE_S:
                promote_cds_archive(part)
