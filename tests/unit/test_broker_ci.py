"""README's two commands and .ci/run stay in step (CI runs the README's test command)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CI_RUN = ROOT / ".ci" / "run"


def _readme_command(marker: str) -> str:
    """Extract a command with .ci/run's own function (so the test checks the real parser)."""
    script = f'source <(sed -n "/^readme_command()/,/^}}/p" {CI_RUN}); readme_command {marker}'
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_readme_test_and_main_commands_work_on_a_fresh_machine() -> None:
    install = "python3 -m pip install --quiet uv && "
    assert _readme_command("ci:test-command") == (
        f"{install}python3 -m uv run --frozen pytest -n 2 --dist worksteal")
    assert _readme_command("ci:main-command").startswith(f"{install}python3 -m uv run --frozen "
                                                         "seamline ")


def test_readme_keeps_its_sections() -> None:
    headings = [line for line in (ROOT / "README.md").read_text().splitlines()
                if line.startswith("## ")]
    assert {"## Set-up", "## Local broker", "## docker compose"} <= set(headings)


def test_ci_script_is_strict_executable_bash() -> None:
    text = CI_RUN.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "ruff check ." in text and "run --frozen mypy" in text
    assert os.access(CI_RUN, os.X_OK)
    subprocess.run(["bash", "-n", str(CI_RUN)], check=True)
