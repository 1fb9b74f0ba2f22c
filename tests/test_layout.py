"""The package's layout: data flows one way, adapters -> cache -> pipeline stages.

The core (everything a ``SemanticCache`` needs to serve a lookup) never imports a
tool (the evaluation harness, calibration, the demo, the CLI), an adapter or a
benchmark, not even lazily inside a function; and no two modules of ``semcache``
import each other, directly or in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Modules that are tools around the cache: they may import the core, never the reverse.
TOOLS = frozenset({
    "semcache.cli", "semcache.demo", "semcache.evaluation", "semcache.calibration",
    "semcache.info", "semcache.datasets", "semcache.report", "semcache.maintain",
})


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for path in (ROOT / "semcache").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    for path in (ROOT / "adapters").glob("*.py"):
        mods["semcache.adapters" + ("" if path.stem == "__init__" else f".{path.stem}")] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every semcache module ``name`` (at ``path``) imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            for a in node.names:  # `from semcache.index import kernels` imports a module
                sub = f"{module}.{a.name}"
                out.add(sub if sub in mods else module)
    return {m for m in out if m in mods or m.split(".")[0] in {"benchmarks", "tests"}}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) - {name} for name, path in mods.items()}


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_core_never_reaches_a_tool_an_adapter_or_a_benchmark() -> None:
    graph = _graph()
    core = [m for m in graph if m not in TOOLS and not m.startswith("semcache.adapters")]
    assert {"semcache", "semcache.cache", "semcache.thresholds", "semcache.index"} <= set(core)
    for module in core:
        bad = {m for m in _reach(graph, module)
               if m in TOOLS or m.startswith(("semcache.adapters", "benchmarks", "tests"))}
        assert not bad, f"{module} imports {sorted(bad)} (directly or through other modules)"


def test_no_import_circle() -> None:
    graph = _graph()
    for module in graph:
        assert module not in _reach(graph, module), f"{module} is in an import circle"
