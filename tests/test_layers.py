"""Imports point down only (docs/architecture.md): data and ops (one base layer: the bank's crop
methods and the plane definitions use the ops kernels) -> envs -> networks -> agents -> the outer
loop. Every ``import`` / ``from ... import`` in a layer's modules (module level or inside a function)
names its own layer, a lower one, or a utility module (``jaxmed.errors``, ``jaxmed.config``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "jaxmed"
LAYERS = ["data", "ops", "envs", "networks", "agents"]
LEVEL = {"data": 0, "ops": 0, "envs": 1, "networks": 2, "agents": 3}
UTILITIES = {"jaxmed.errors", "jaxmed.config"}


def _jaxmed_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "jaxmed" else [f"jaxmed.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "jaxmed" or name.startswith("jaxmed."):
                yield node.lineno, name


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LEVEL.get(parts[1]) if len(parts) > 1 else None


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_down(layer):
    level = LEVEL[layer]
    upward = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for line, module in _jaxmed_imports(path):
            if module in UTILITIES or module == "jaxmed":
                continue
            target = _layer(module)
            if target is None or target > level:
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} imports {module}")
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)


def test_no_import_cycles_between_modules():
    """No two modules import each other, directly or around a loop (imports inside functions
    included; a package's ``__init__`` is left out: it gathers its own submodules by design)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py") if p.name != "__init__.py"}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = sorted(t for t in targets if t in modules and t != name)
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
