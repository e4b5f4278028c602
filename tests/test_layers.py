"""The layer rules of docs/architecture.md, read from the source with ``ast``.

1. Floor: ``tandem.core`` and ``tandem.protocol`` import nothing else of the project (protocol may use core).
2. Components: ``hardware`` < ``teleop`` < ``policies`` < ``runtime`` | ``value``. Each imports only
   components below it and the floor; ``runtime`` and ``value`` never import each other.
3. Roof: ``tandem.cli``, ``tandem.commands``, ``tandem.reports``, ``tandem.bench`` may import anything;
   nothing below the roof imports them.

Every import counts, at module level or inside a function. Imports of the project's own modules inside
functions are kept to at most 10% of all of them (heavy optional libraries are what belongs there).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# folder in the repository -> package it is installed as
FOLDERS = {"tandem": "tandem", "runtime": "tandem.runtime", "policies": "tandem.policies", "value": "tandem.value",
           "hardware": "tandem.hardware", "teleop": "tandem.teleop"}
ROOF = ("tandem.cli", "tandem.commands", "tandem.reports", "tandem.bench", "tandem.__main__")
FLOOR = ("tandem.core", "tandem.protocol")
# component -> the components (besides the floor) it may import
ALLOWED = {
    "tandem.core": set(),
    "tandem.protocol": {"tandem.core"},
    "tandem.hardware": set(FLOOR),
    "tandem.teleop": {*FLOOR, "tandem.hardware"},
    "tandem.policies": {*FLOOR, "tandem.hardware", "tandem.teleop"},
    "tandem.runtime": {*FLOOR, "tandem.hardware", "tandem.teleop", "tandem.policies"},
    "tandem.value": {*FLOOR, "tandem.hardware", "tandem.teleop", "tandem.policies"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


class _Imports(ast.NodeVisitor):
    """(imported module, inside a function?, line) for every import of the project's own modules."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.depth = 0
        self.found: list[tuple[str, bool, int]] = []

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        name = node.module or ""
        if node.level:  # relative: resolve against this module's package
            base = self.module.split(".")
            base = base if self.is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            name = ".".join([*base, name] if name else base)
        if name == "tandem" or name.endswith(".") or not node.module:  # from tandem.x import module
            for alias in node.names:
                self._add(f"{name}.{alias.name}", node.lineno)
        else:
            self._add(name, node.lineno)

    def _add(self, name: str, line: int) -> None:
        if name == "tandem" or name.startswith("tandem."):
            self.found.append((name, self.depth > 0, line))


def _imports() -> list[tuple[str, str, bool, int]]:
    out = []
    for module, path in _modules().items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        out += [(module, name, inner, line) for name, inner, line in visitor.found]
    return out


def _layer(module: str) -> str:
    """The layer a module belongs to: a floor package, a component, "roof", or "tandem" (the package root)."""
    if module.startswith(ROOF) and (module in ROOF or module.startswith(tuple(r + "." for r in ROOF))):
        return "roof"
    for name in (*FLOOR, *ALLOWED):
        if module == name or module.startswith(name + "."):
            return name
    return "tandem"


def _why_not(src_module: str, dst_module: str) -> str | None:
    """None when ``src_module`` may import ``dst_module``, else the rule it breaks."""
    src, dst = _layer(src_module), _layer(dst_module)
    if src == "roof" or src == dst:
        return None
    if dst == "roof":
        return "nothing imports the roof (cli, commands, reports, bench)"
    if src == "tandem":
        return "the package root imports nothing"
    if dst not in ALLOWED[src]:
        return f"{src} may import only {sorted(ALLOWED[src]) or 'itself'}"
    return None


def _violations() -> list[str]:
    modules = _modules()
    return [f"{modules[m].relative_to(REPO)}:{line} imports {n}: {why}"
            for m, n, _inner, line in _imports() if (why := _why_not(m, n))]


def test_every_import_points_down_the_layers() -> None:
    assert _violations() == []


def test_runtime_and_value_never_import_each_other() -> None:
    crossing = [(m, n) for m, n, _, _ in _imports()
                if {_layer(m), _layer(n)} == {"tandem.runtime", "tandem.value"}]
    assert crossing == []


def test_runtime_is_split_into_subsystems() -> None:
    subpackages = [p for p in (REPO / "runtime").iterdir() if (p / "__init__.py").is_file()]
    assert len(subpackages) >= 4, subpackages


def test_few_imports_inside_functions() -> None:
    found = _imports()
    inner = [f"{m}:{line} {n}" for m, n, is_inner, line in found if is_inner]
    assert len(found) > 100
    assert len(inner) <= 0.10 * len(found), "\n".join(inner)


@pytest.mark.parametrize("src,dst,ok", [
    ("tandem.runtime.session", "tandem.value.replay", False),
    ("tandem.value.learner", "tandem.runtime.links.weights", False),
    ("tandem.protocol.wire", "tandem.core.errors", True),
    ("tandem.core.errors", "tandem.protocol.wire", False),
    ("tandem.hardware.robot", "tandem.policies.base", False),
    ("tandem.policies.base", "tandem.hardware.robot", True),
    ("tandem.runtime.session", "tandem.commands.run", False),
    ("tandem.commands.run", "tandem.value.learner", True),
])
def test_the_rules_themselves(src: str, dst: str, ok: bool) -> None:
    """The checker refuses what the rules refuse (so the tests above cannot pass vacuously)."""
    assert (_why_not(src, dst) is None) is ok
