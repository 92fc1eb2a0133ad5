"""What the local REST catalog needs before it starts: Java, the jars, the compiled launcher.

The jars are resolved once by Maven from ``pom.xml`` next to this file into
``~/.cache/seamline/iceberg-rest-<version>/libs`` (``SEAMLINE_CACHE_DIR`` overrides the root),
with the broker's helpers (a file lock, a staging directory renamed into place). The launcher
``SeamlineRestCatalog.java`` (Iceberg's ``RESTCatalogAdapter``/``RESTCatalogServlet`` on a
Jetty connector bound to 127.0.0.1; Iceberg's own ``RESTCatalogServer`` binds 0.0.0.0) is
compiled once with ``javac`` into ``classes-<digest>`` next to the jars, the same way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from coordinator.core.errors import BrokerError, ServiceError
from stream.broker.setup import Java, cache_root, ensure_maven_jars, file_lock, find_java

log = logging.getLogger(__name__)

ICEBERG_VERSION = "1.10.1"
HERE = Path(__file__).resolve().parent
POM_PATH = HERE / "pom.xml"
LAUNCHER_SOURCE = HERE / "SeamlineRestCatalog.java"
LAUNCHER_MAIN = "SeamlineRestCatalog"
SETUP_HINT = (
    "install a JDK 17+ and Maven (apt-get install openjdk-17-jdk-headless maven); the jars are "
    "fetched from Maven Central once"
)


def java_for_catalog(what: str = "the REST catalog") -> Java:
    """The Java runtime, with a hint that speaks of ``what`` needs it (not the broker)."""
    try:
        return find_java()
    except BrokerError as exc:
        raise ServiceError(f"{what} needs Java: {exc.args[0]}", hint=SETUP_HINT) from None


def ensure_catalog_jars() -> Path:
    """The directory holding every jar the REST catalog needs (resolved once)."""
    libs = cache_root() / f"iceberg-rest-{ICEBERG_VERSION}" / "libs"
    return ensure_maven_jars(POM_PATH, libs, what=f"Iceberg REST catalog {ICEBERG_VERSION}",
                             expect="iceberg-open-api-*-test-fixtures.jar", hint=SETUP_HINT,
                             error=ServiceError)


def ensure_launcher(libs: Path) -> Path:
    """The directory holding the compiled launcher class (compiled once per source digest)."""
    digest = hashlib.sha256(LAUNCHER_SOURCE.read_bytes()).hexdigest()[:16]
    classes = libs.parent / f"classes-{digest}"
    if (classes / f"{LAUNCHER_MAIN}.class").is_file():
        return classes
    with file_lock(libs.parent / ".lock"):
        if not (classes / f"{LAUNCHER_MAIN}.class").is_file():
            _compile(libs, classes)
    return classes


def _compile(libs: Path, classes: Path) -> None:
    javac = shutil.which("javac")
    if javac is None:
        raise ServiceError("javac is not on PATH: the REST catalog launcher cannot be compiled",
                           hint=SETUP_HINT)
    staging = Path(tempfile.mkdtemp(prefix=".classes-", dir=libs.parent))
    try:
        cmd = [javac, "-d", str(staging), "-cp", f"{libs}{os.sep}*", str(LAUNCHER_SOURCE)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise ServiceError(f"compiling {LAUNCHER_SOURCE.name} failed (exit "
                               f"{done.returncode}): {(done.stdout + done.stderr)[-1500:]}",
                               hint="check the JDK (javac 17+) and the cached jars in " + str(libs))
        os.rename(staging, classes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def catalog_command(
    java: Java, libs: Path, classes: Path, *, port: int, data_dir: Path, warehouse: str,
    properties_file: Path | None = None,
) -> list[str]:
    """The JVM command line serving the catalog on ``127.0.0.1:port`` from ``data_dir``.

    ``properties_file`` (mode 0600: it may hold S3 keys, which never go on a command line)
    adds catalog properties, e.g. the ``s3.*`` ones of an ``s3://`` warehouse.
    """
    jdbc = f"jdbc:sqlite:{data_dir / 'catalog.db'}"
    cmd = [java.path, "-Xmx384m", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
           "-cp", f"{libs}{os.sep}*{os.pathsep}{classes}", LAUNCHER_MAIN, str(port), warehouse,
           jdbc]  # fmt: skip
    if properties_file is not None:
        cmd.append(str(properties_file))
    return cmd
