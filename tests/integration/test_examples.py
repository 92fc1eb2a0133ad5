"""The example user projects under ``examples/`` pass their own tests, in their own environment.

Each example is a project of its own (own ``pyproject.toml`` and ``uv.lock``, seamline as an
editable path dependency); CI runs only this suite, so this test runs the example's suite in a
subprocess with ``uv run --frozen --project examples/<name> pytest``, pointing it at this
session's broker, and checks from its JUnit report that every test ran and passed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET  # parsing our own subprocess's report
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["orders"])
def test_example_project_passes_its_own_tests(name: str, kafka_bootstrap: str,
                                              tmp_path: Path) -> None:  # fmt: skip
    uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` names itself in UV
    assert uv is not None, "expected uv (the UV variable or uv on PATH) to run the example"
    project = EXAMPLES / name
    junit = tmp_path / "junit.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["KAFKA_BOOTSTRAP"] = kafka_bootstrap  # reuse this session's broker
    proc = subprocess.run(
        [uv, "run", "--frozen", "--project", str(project), "pytest", "-p", "no:cacheprovider",
         f"--junitxml={junit}"],
        cwd=project, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, output
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None, output
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] >= 1, output
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0, (counts, output)
