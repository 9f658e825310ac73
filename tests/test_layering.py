"""The layering contract: library modules import only from their own layer or the layers below it,
and no two modules import each other, directly or round a loop.

The layers are ``experiment/layers.py``'s ``LAYERS`` (ARCHITECTURE.md's layer table is generated from it);
this test reads every module's imports with ``ast`` (including imports inside functions, which are still
dependencies) and fails naming the offending file, line and import.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from experiment.layers import LAYERS, graph, is_module, layer_of, package_of

ROOT = Path(__file__).resolve().parents[1]


def test_no_upward_import():
    upward = []
    for module, deps in graph(ROOT).items():
        mine = layer_of(module)
        for line, dep in deps:
            if layer_of(dep) > mine:
                upward.append(f"{module.replace('.', '/')}.py:{line} imports {dep} "
                              f"({LAYERS[layer_of(dep)].name} is above {LAYERS[mine].name})")
    assert not upward, "upward imports (see ARCHITECTURE.md, 'Layers'):\n" + "\n".join(upward)


def test_no_import_cycle():
    edges = {m: {d for _, d in deps if d != m} for m, deps in graph(ROOT).items()}
    # a package's __init__ that re-exports is not a cycle with its own modules
    edges = {m: {d for d in ds if not (m.startswith(d + ".") or d.startswith(m + "."))} for m, ds in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_cycle_between_packages():
    """ckpt -> train -> ckpt is a cycle even when no single module imports itself back round."""
    edges: dict[str, set[str]] = {}
    for module, deps in graph(ROOT).items():
        if layer_of(module) == len(LAYERS) - 1:
            continue  # entry points sit above everything
        for _, dep in deps:
            if package_of(dep) != package_of(module):
                edges.setdefault(package_of(module), set()).add(package_of(dep))
    cycles = [f"{a} <-> {b}" for a in edges for b in edges[a] if a < b and a in edges.get(b, ())]
    assert not cycles, "packages that import each other:\n" + "\n".join(cycles)


def test_the_contract_catches_what_it_should(tmp_path, monkeypatch):
    """Guards the test itself: an upward import, a package cycle and a private name used from another module
    in a scratch tree are reported."""
    pkg = tmp_path / "experiment"
    for name, text in {"__init__.py": "", "model/__init__.py": "", "train/__init__.py": "",
                       "model/build.py": "from experiment.train import runner\n",
                       "train/runner.py": "from experiment.model import build\nbuild._shape()\n"}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="model/build.py:1 imports experiment.train.runner"):
        test_no_upward_import()
    with pytest.raises(AssertionError, match="experiment.model <-> experiment.train"):
        test_no_cycle_between_packages()
    with pytest.raises(AssertionError, match="train/runner.py:2 uses build._shape"):
        test_no_private_name_used_across_modules()


def private_uses(root: Path) -> list[str]:
    """``module._name`` or ``from experiment.x import _name`` across modules: a private name used from outside
    its module is an interface nobody declared (it changes without notice)."""
    import ast

    found = []
    for path in sorted((root / "experiment").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = set()  # local names bound to kit modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "experiment":
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{path.relative_to(root)}:{node.lineno} imports {node.module}.{a.name}")
                    elif is_module(f"{node.module}.{a.name}", root):
                        aliases.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.asname and a.name.startswith("experiment.")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{path.relative_to(root)}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_private_name_used_across_modules():
    found = private_uses(ROOT)
    assert not found, ("private names used from another module (make them public, with a docstring, or move "
                       "the caller):\n" + "\n".join(found))


MAX_MODULE_LINES = 500  # past this a module does two jobs (issue 30 split the six that were)


def test_no_module_over_500_lines():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted((ROOT / "experiment").rglob("*.py"))
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them along their seams):\n" + "\n".join(big)
