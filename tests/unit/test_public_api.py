"""``import seamline``: the public API module, its version and the CLI's ``--version``."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

BIN = Path(sys.executable).parent


def test_import_seamline_and_cli_version_agree_with_the_package_metadata(tmp_path: Path) -> None:
    # run from an empty folder: the import must come from the installed distribution
    api = subprocess.run(
        [sys.executable, "-c", "import seamline; print(seamline.__version__)"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    cli = subprocess.run(
        [str(BIN / "seamline"), "--version"], capture_output=True, text=True, check=True
    )
    assert api.stdout.strip() == version("seamline")
    assert cli.stdout.strip() == f"seamline {version('seamline')}"


def test_the_public_names_are_the_entry_points_the_cli_uses() -> None:
    import seamline

    from coordinator.core.errors import ExitCode
    from coordinator.core.jobspec import load_job, parse_job
    from coordinator.run.orchestrate import JobOutcome
    from coordinator.service import reconcile_and_record, reprocess, run_job, run_live

    assert seamline.load_job is load_job and seamline.parse_job is parse_job
    assert seamline.run_job is run_job and seamline.run_live is run_live
    assert seamline.reconcile_job is reconcile_and_record and seamline.reprocess is reprocess
    assert seamline.JobOutcome is JobOutcome and seamline.ExitCode is ExitCode
    assert int(seamline.ExitCode.CONFIG) == 3
    missing = [name for name in seamline.__all__ if not hasattr(seamline, name)]
    assert missing == []
