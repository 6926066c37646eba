"""The layers of ``service/`` (docs in ../shared/DESIGN.md): the core knows no web framework,
arrows only point down, and no module imports itself back through another."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys

import model_export
from tests.support import ROOT

SERVICE = ROOT / "service"
# What knows HTTP, and what composes it with the core: nothing below imports these.
EDGE = {
    "access",
    "api",
    "apidocs",
    "app",
    "oip",
    "oip_grpc",
    "oip_infer",
    "oip_tensors",
    "oip_wire",
    "openapi",
    "page",
    "problems",
    "protocol",
    "repository_api",
    "schemas",
    "security",
    "semantics",
    "server",
}
CORE = {
    "admission",
    "batching",
    "context",
    "control",
    "core",
    "errors",
    "imaging",
    "lanes",
    "masks",
    "metrics",
    "model_card",
    "pipeline",
    "png",
    "policies",
    "repository",
    "resampling",
    "runtime",
    "providers",
    "settings",
    "signature",
    "threads",
    "tiling",
    "waiting",
}
FRAMEWORKS = ("fastapi", "starlette")


def service_imports(module: str) -> set[str]:
    """The ``service`` modules that ``service/<module>.py`` imports, wherever the import is."""
    tree = ast.parse((SERVICE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "service":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service."):
            found.add(node.module.split(".")[1])  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("service."))
    return found


def all_service_modules() -> list[str]:
    return sorted(p.stem for p in SERVICE.glob("*.py") if p.stem != "__init__")


def test_every_service_module_is_placed_in_a_layer() -> None:
    entry = {"__main__", "processes", "listen", "logs"}
    assert set(all_service_modules()) == CORE | EDGE | entry


def test_the_core_never_imports_the_edge() -> None:
    for module in sorted(CORE):
        assert not service_imports(module) & EDGE, module


def test_there_is_no_import_cycle_in_service() -> None:
    graph = {module: service_imports(module) for module in all_service_modules()}

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*path, module))

    for module in graph:
        visit(module, ())


def test_core_model_export_and_supervisor_load_no_web_framework() -> None:
    modules = [f"service.{m}" for m in sorted(CORE)]
    modules += ["service.processes", "service.__main__", "model_export", "bench.offline"]
    modules += [f"model_export.{m.name}" for m in pkgutil.iter_modules(model_export.__path__)]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(json.dumps([m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert json.loads(run.stdout) == []
