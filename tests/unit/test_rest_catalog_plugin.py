"""The REST catalog fixture (and the S3 server fixture its warehouse needs) fails loudly (never
skips) without Java or Maven; the pom's Iceberg version is the one the code names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from backfill.sinks.iceberg.rest_server.setup import ICEBERG_VERSION, POM_PATH

TEST_USING_REST = '''
def test_needs_rest(iceberg_rest_catalog) -> None:
    assert iceberg_rest_catalog.uri
'''


def _run_pytest_with_path(tmp_path: Path, path_dir: Path) -> str:
    (tmp_path / "test_uses_rest.py").write_text(TEST_USING_REST)
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env |= {"PATH": str(path_dir), "SEAMLINE_CACHE_DIR": str(tmp_path / "empty-cache")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
         str(tmp_path / "test_uses_rest.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 error" in done.stdout and "skipped" not in done.stdout
    return done.stdout


def test_without_java_the_fixture_fails_with_the_reason(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    out = _run_pytest_with_path(tmp_path, empty)
    assert "no S3 server for the tests: the S3 server needs Java" in out
    assert "install a JDK 17+ and Maven" in out


def test_without_maven_the_fixture_fails_with_the_reason(tmp_path: Path) -> None:
    only_java = tmp_path / "bin"
    only_java.mkdir()
    java = shutil.which("java")
    assert java is not None
    (only_java / "java").symlink_to(os.path.realpath(java))
    out = _run_pytest_with_path(tmp_path, only_java)
    assert "Maven (mvn) is not on PATH and the S3Proxy 2.9.0 jars are not cached" in out


def test_pom_pins_the_iceberg_version_the_code_names() -> None:
    found = re.search(r"<iceberg.version>([^<]+)</iceberg.version>", POM_PATH.read_text())
    assert found is not None and found.group(1) == ICEBERG_VERSION
