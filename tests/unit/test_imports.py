"""Every product module imports cleanly and importing starts nothing: the doctest collection
(``--doctest-modules`` over coordinator, stream, backfill and reconcile) imports them all in
the fast tier, so an import must not start a thread, a process or a broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("coordinator", "stream", "backfill", "reconcile")

_PROBE = """
import importlib, json, multiprocessing, pkgutil, threading
names, failed = [], {}
for pkg in %r:
    for info in pkgutil.walk_packages([pkg], prefix=pkg + "."):
        try:
            importlib.import_module(info.name)
            names.append(info.name)
        except Exception as exc:
            failed[info.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({
    "modules": names,
    "failed": failed,
    "threads": [t.name for t in threading.enumerate() if t is not threading.main_thread()],
    "children": [p.name for p in multiprocessing.active_children()],
}))
"""


def test_every_product_module_imports_and_starts_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE % (PACKAGES,)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["failed"] == {}
    assert found["threads"] == [] and found["children"] == []
    assert len(found["modules"]) > 60  # every subpackage was walked, not just the top level
    for pkg in PACKAGES:
        assert any(m.startswith(pkg + ".") for m in found["modules"]), pkg
