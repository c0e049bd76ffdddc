"""The layout shows the design: imports point one way (cli/tasks -> recipes -> nsutil), there
is no import circle anywhere (imports inside functions too), no module is much over 600
lines, nobody calls another module's private names, and no comment cites an issue number.

Read from the source with :mod:`ast`, so nothing is imported or run.
"""
from __future__ import annotations

import ast
import os
import re
from functools import lru_cache

import pytest

from helpers import ROOT

pytestmark = pytest.mark.userspace

PACKAGES = ("nsutil", "recipes", "cli")
MAX_LINES = 620            #: "about 600"
LAYER = {"nsutil": 0, "recipes": 1, "cli": 2, "tasks": 2}


@lru_cache(maxsize=1)
def modules() -> dict[str, str]:
    """{dotted module name: file} of the project's own modules."""
    found = {"tasks": os.path.join(ROOT, "tasks.py")}
    for pkg in PACKAGES:
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str) -> list[tuple[str, ast.ImportFrom | ast.Import]]:
    """(imported project module, node) for every import in module ``name``, also those inside
    functions; ``from pkg import mod`` counts as an import of ``pkg.mod``."""
    mods = modules()
    path = mods[name]
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            out += [(a.name, node) for a in node.names if a.name in mods]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for a in node.names:
                if f"{target}.{a.name}" in mods:
                    out.append((f"{target}.{a.name}", node))
                elif target in mods:
                    out.append((target, node))
    return out


def graph() -> dict[str, set[str]]:
    """{module: the project modules it imports}."""
    return {m: {t for t, _ in _imports(m) if t != m} for m in modules()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if not state.get(v):
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for m in sorted(edges):
        if not state.get(m):
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_circle_anywhere():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_the_circle_finder_finds_one():
    """The check above is not vacuous: a made-up circle is found, a DAG is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert len(graph()) > 60 and sum(len(v) for v in graph().values()) > 150


def test_imports_point_one_way():
    """tasks.py and cli -> recipes -> nsutil: nsutil imports no recipes, recipes no cli."""
    wrong = [f"{m} imports {t}" for m, targets in graph().items() for t in targets
             if LAYER[t.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert not wrong, wrong


def test_no_module_is_much_over_600_lines():
    big = {m: n for m, p in modules().items() if (n := sum(1 for _ in open(p))) > MAX_LINES}
    assert not big, big


def test_no_module_uses_another_modules_private_names():
    """Neither ``from x import _name`` nor ``module._name`` across modules."""
    mods, found = modules(), []
    for name, path in mods.items():
        tree = ast.parse(open(path).read(), path)
        aliases = {}
        for target, node in _imports(name):
            for a in node.names:
                if isinstance(node, ast.ImportFrom) and a.name.startswith("_") \
                        and not a.name.startswith("__") and target != name:
                    found.append(f"{name}: from {target} import {a.name}")
                if target.endswith("." + a.name) or target == a.name:
                    aliases[a.asname or a.name.split(".")[0]] = target
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{name}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    assert not found, found


def test_no_comment_cites_an_issue_number():
    pattern = re.compile(r"#.*\bissue\s*#?\d+", re.IGNORECASE)
    cited = [f"{m}:{i}" for m, p in modules().items()
             for i, line in enumerate(open(p), 1) if pattern.search(line)]
    assert not cited, cited
