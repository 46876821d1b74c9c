"""The house's shape, read from the real imports: no import cycles between files, no import from
a lower layer to a higher one (the order is the ``layers`` block of docs/design/architecture.md),
and typer imported only by the command line.

Every ``import`` counts, in function bodies too: a lazy import still ties two files together.
The checker is tried on a small made-up package first, so that a broken checker cannot pass the
real one.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "design" / "architecture.md"


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``src/package``."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(src: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {imported module of the same package: first line}; ``from pkg import name``
    counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    files = module_files(src, package)

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, dict[str, int]] = defaultdict(dict)
    for module, path in files.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                if target == package or target.startswith(package + "."):
                    found = owner(target)
                    if found and found != module:
                        edges[module].setdefault(found, node.lineno)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    nodes = sorted(set(edges) | {t for targets in edges.values() for t in targets})
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_table(text: str) -> dict[str, int]:
    """The ``layers`` block: one line per layer, bottom first, ``N  unit unit ...``; a unit is a
    top-level module or sub-package of waluigi (``waluigi`` itself is the package's face)."""
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, f"{DOC} has no ```layers block"
    table = {}
    for line in block.group(1).splitlines():
        number, *units = line.split("#")[0].split()
        for unit in units:
            assert unit not in table, f"{unit} is in two layers"
            table[unit] = int(number)
    return table


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def violations(edges: dict[str, dict[str, int]], table: dict[str, int]) -> list[str]:
    """Imports from a lower layer to a higher one, and modules in no layer."""
    out = []
    for module, targets in sorted(edges.items()):
        for target, line in sorted(targets.items()):
            a, b = unit_of(module), unit_of(target)
            if a not in table or b not in table:
                out.append(f"{module}: {a if a not in table else b} is in no layer of {DOC.name}")
            elif table[b] > table[a]:
                out.append(f"{module}:{line} imports {target}: layer {table[a]} ({a}) -> layer {table[b]} ({b})")
    return out


def test_the_checker_finds_a_cycle_and_an_import_up_the_layers(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from toy.low import b\n")  # lazy, still counted
    (pkg / "low" / "b.py").write_text("from . import a\n")
    (pkg / "high.py").write_text("import toy.low.a\n")
    (pkg / "low" / "c.py").write_text("from toy.high import x\n")
    edges = imports(tmp_path, "toy")
    assert cycles(edges) == [["toy.low.a", "toy.low.b"]]
    table = {"low": 1, "high": 2, "toy": 3}
    assert violations(edges, table) == ["toy.low.c:1 imports toy.high: layer 1 (low) -> layer 2 (high)"]
    del table["high"]
    assert any("high is in no layer" in v for v in violations(edges, table))


def test_no_import_cycles_between_files():
    found = cycles(imports(SRC, "waluigi"))
    assert found == [], "files that import each other (break the circle: move what both need lower):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_no_import_runs_up_the_layers():
    table = layer_table(DOC.read_text())
    edges = imports(SRC, "waluigi")
    units = {unit_of(m) for m in module_files(SRC, "waluigi")}
    assert units - set(table) == set(), f"place these in the layers block of {DOC}"
    assert violations(edges, table) == []


def test_only_the_command_line_imports_typer():
    outside = []
    for module, path in module_files(SRC, "waluigi").items():
        if unit_of(module) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "typer" or n.startswith("typer.") for n in names):
                outside.append(f"{module}:{node.lineno}")
    assert outside == []
