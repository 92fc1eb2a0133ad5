"""The package rules, checked over the AST of every product module (imports anywhere in a
module count, including those inside functions and ``TYPE_CHECKING`` blocks):

* ``coordinator.core`` imports nothing else from the project;
* ``stream``, ``backfill`` and ``reconcile`` import only ``coordinator.core`` from the
  coordinator;
* ``stream`` and ``reconcile`` never import ``backfill`` (the reconciler receives its table
  and archive readers as parameters);
* no product module imports a ``coordinator.cli`` module except ``coordinator.cli.main``;
* only the composition root (``coordinator.service``) and the sink registry
  (``backfill.sinks``) construct table adapters (``IcebergSink(``, ``LanceSink(``);
* only the composition root and the worker-side slice executor (``backfill.executor``, which
  receives a picklable job) open a job's table through the registry (``open_sink(``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backfill.sinks import SINKS, open_sink
from coordinator.core.errors import ConfigError
from coordinator.core.jobspec import JobSpec, parse_job

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("coordinator", "stream", "backfill", "reconcile")
ADAPTERS = frozenset({"IcebergSink", "LanceSink"})
BUILDERS = frozenset({"coordinator.service", "backfill.sinks"})
TABLE_OPENERS = frozenset({"coordinator.service", "backfill.executor"})


@dataclass(frozen=True)
class Module:
    name: str
    tree: ast.Module


def parse_module(name: str, source: str) -> Module:
    return Module(name, ast.parse(source))


def product_modules() -> Iterator[Module]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield parse_module(name, path.read_text(encoding="utf-8"))


def imports(module: Module) -> Iterator[tuple[int, str]]:
    """``(line, imported module)`` of every absolute import; ``from a import b`` also yields
    ``a.b`` (``b`` may be a submodule)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            yield from ((node.lineno, f"{node.module}.{a.name}") for a in node.names)


def calls(module: Module, names: frozenset[str]) -> Iterator[tuple[int, str]]:
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Call):
            f = node.func
            called = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if called in names:
                yield node.lineno, called


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def import_violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or ``None``."""
    top = importer.split(".")[0]
    project = imported.split(".")[0] in PACKAGES
    in_core = _within(imported, "coordinator.core")
    if _within(importer, "coordinator.core") and project and not in_core:
        return "coordinator.core imports nothing else from the project"
    other_side = top in ("stream", "backfill", "reconcile")
    if other_side and _within(imported, "coordinator") and not in_core:
        return f"{top} imports only coordinator.core from the coordinator"
    if top in ("stream", "reconcile") and _within(imported, "backfill"):
        return f"{top} never imports backfill"
    if _within(imported, "coordinator.cli") and importer != "coordinator.cli.main":
        return "only coordinator.cli.main imports a coordinator.cli module"
    return None


def violations(modules: list[Module]) -> list[str]:
    found: list[str] = []
    for m in modules:
        seen: set[tuple[int, str]] = set()
        for line, imported in imports(m):
            why = import_violation(m.name, imported)
            if why is not None and (line, why) not in seen:
                seen.add((line, why))
                found.append(f"{m.name}:{line} imports {imported}: {why}")
        if m.name not in BUILDERS:
            found += [f"{m.name}:{line} constructs {c}: only {sorted(BUILDERS)} may"
                      for line, c in calls(m, ADAPTERS)]  # fmt: skip
        if m.name not in TABLE_OPENERS and m.name != "backfill.sinks":
            found += [f"{m.name}:{line} calls {c}: tables are opened by coordinator.service"
                      for line, c in calls(m, frozenset({"open_sink"}))]  # fmt: skip
    return found


def test_product_modules_keep_the_import_rules() -> None:
    modules = list(product_modules())
    assert len(modules) > 80  # every package was found
    assert violations(modules) == []


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        ("coordinator.core.values", "from coordinator.plan import cut", "coordinator.core imports"),
        ("reconcile.run", "from backfill.sinks import open_sink", "reconcile never imports"),
        ("reconcile.run", "def f():\n    from backfill.sources import archive", "never imports"),
        ("stream.live.loop", "import backfill.sinks.common", "stream never imports backfill"),
        ("backfill.executor", "from coordinator.run import runner", "only coordinator.core"),
        ("coordinator.run.orchestrate", "from coordinator.cli.reconcile import x", "cli.main"),
        ("coordinator.cli.jobs", "from coordinator.cli import live", "cli.main"),
        ("coordinator.demo.run", "s = IcebergSink(c, 'a.b', schema, 'ts')", "constructs"),
        ("reconcile.run", "t = lance_sink.LanceSink(uri, schema, 'ts')", "constructs"),
        ("coordinator.run.lag_gate", "t = registry.open_sink(job)", "opened by"),
    ],
)
def test_the_checker_finds_a_planted_violation(name: str, source: str, expected: str) -> None:
    found = violations([parse_module(name, source)])
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("coordinator.cli.main", "import coordinator.cli.jobs"),
        (
            "coordinator.service",
            "from backfill.sinks.iceberg.sink import IcebergSink\nIcebergSink()",
        ),
        ("backfill.sinks", "LanceSink(uri, schema, 'ts')"),
        ("reconcile.run", "from coordinator.core.ports import TableReader"),
        ("coordinator.run.runner", "from backfill.sinks.common import commit_guard"),
    ],
)
def test_the_checker_allows_what_the_rules_allow(name: str, source: str) -> None:
    assert violations([parse_module(name, source)]) == []


def test_the_sink_family_loads_no_table_format_until_asked() -> None:
    code = (
        "import sys, backfill.sinks.common, backfill.sinks\n"
        "print(sorted(m for m in sys.modules if m.startswith("
        "('backfill.sinks.iceberg', 'backfill.sinks.lance', 'lance', 'pyiceberg'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
    assert sorted(SINKS) == ["iceberg", "lance"]


def _lance_job(tmp_path: Path) -> JobSpec:
    doc = {
        "stream": {"bootstrap": "127.0.0.1:1", "topic": "orders"},
        "schema": {"event_time": "ts", "fields": {"ts": "timestamp_ms", "order_id": "int64"}},
        "table": {"format": "lance", "uri": "t.lance"},
    }
    return parse_job(doc, base_dir=tmp_path, default_id="registry")


def test_a_format_not_in_the_registry_is_a_config_error(tmp_path: Path) -> None:
    job = _lance_job(tmp_path)
    other = job.model_copy(update={"table": job.table.model_copy(update={"format": "delta"})})
    with pytest.raises(
        ConfigError,
        match=r"key=table.format: expected one of \['iceberg', 'lance'\], found 'delta'",
    ):
        open_sink(other)


def test_a_new_format_is_one_registry_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _lance_job(tmp_path)
    seen: list[tuple[str, float]] = []

    def factory(j: JobSpec, maintenance: object) -> object:
        seen.append((j.job_id, maintenance.min_age_s))  # type: ignore[attr-defined]
        return "memory table"

    monkeypatch.setitem(SINKS, "memory", factory)  # type: ignore[arg-type]
    other = job.model_copy(update={"table": job.table.model_copy(update={"format": "memory"})})
    assert open_sink(other, min_age_s=5.0) == "memory table"  # type: ignore[comparison-overlap]
    assert seen == [("registry", 5.0)]
