"""The package's imports point down: no module imports (even inside a function) one that imports it back."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).parent.parent / "arcttt"


def import_graph() -> dict[str, set[str]]:
    mods = {p.stem for p in PKG.glob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m in mods:
        for node in ast.walk(ast.parse((PKG / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("arcttt."):
                graph[m].add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "arcttt":
                graph[m] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.Import):
                graph[m] |= {a.name.split(".")[1] for a in node.names if a.name.startswith("arcttt.")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Groups of modules that reach each other (strongly connected, more than one module)."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reached = {m: reach(m) for m in graph}
    groups = {frozenset({m} | {n for n in reached[m] if m in reached[n]}) for m in graph}
    return [set(g) for g in groups if len(g) > 1]


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    found = circles(import_graph())
    assert found == [], found


PURE = ("data", "augment", "formats", "tokenizer", "records", "tree", "pretransform", "errors", "faults", "shards")
"""Modules of pure numpy and text: importing them loads no torch (nor transformers)."""


def test_pure_modules_import_no_torch():
    code = (f"import sys, {', '.join('arcttt.' + m for m in PURE)}; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(PKG.parent), os.environ.get("PYTHONPATH"))))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout
