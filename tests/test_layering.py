"""The layering contract: library modules import only from their own layer or the layers below it,
and no two modules import each other, directly or round a loop.

The layers are documented in ARCHITECTURE.md; this test reads every module's imports with ``ast``
(including imports inside functions, which are still dependencies) and fails naming the offending
file, line and import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "experiment"

# Lowest first. A module may import from its own layer and from any layer listed before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("experiment", "experiment.atomic", "experiment.errors", "experiment.determinism",
              "experiment.megatron_import", "experiment.system_packages", "experiment.engine",
              "experiment.runlog", "experiment.summary",
              "experiment.launcher_names", "experiment.duration", "experiment.hashing",
              "experiment.short_lived")),
    ("model", ("experiment.model",)),
    ("folder", ("experiment.folder",)),
    ("data", ("experiment.data",)),
    ("mixture", ("experiment.mixture",)),
    ("lock", ("experiment.lock",)),
    ("ckpt", ("experiment.ckpt",)),
    ("train", ("experiment.train",)),
    ("launch", ("experiment.launch",)),
    # entry points: the typer commands (every package's cli.py), the top-level CLI and the demo
    ("entry", ("experiment.cli", "experiment.demo", "experiment.docs", "experiment.compare",
               "experiment.report", "experiment.evaluate")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    """Index of the layer a module belongs to (the longest matching prefix wins; cli.py is entry)."""
    if module.endswith(".cli"):
        return len(LAYERS) - 1
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                if prefix == "experiment" and module != "experiment":
                    continue  # the bare package name matches only experiment/__init__.py
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module}: not in any layer of tests/test_layering.py (add it to LAYERS)")
    return best


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every ``experiment`` import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "experiment"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "experiment":
            base = node.module
            for alias in node.names:  # `from experiment.x import y` may name the module experiment.x.y
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if _exists(candidate) else base))
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def graph() -> dict[str, list[tuple[int, str]]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_upward_import():
    upward = []
    for module, deps in graph().items():
        mine = layer_of(module)
        for line, dep in deps:
            if layer_of(dep) > mine:
                upward.append(f"{module.replace('.', '/')}.py:{line} imports {dep} "
                              f"({LAYERS[layer_of(dep)][0]} is above {LAYERS[mine][0]})")
    assert not upward, "upward imports (see ARCHITECTURE.md, 'Layers'):\n" + "\n".join(upward)


def test_no_import_cycle():
    edges = {m: {d for _, d in deps if d != m} for m, deps in graph().items()}
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


def package_of(module: str) -> str:
    """The subpackage a library module belongs to (experiment.train.runner -> experiment.train)."""
    return ".".join(module.split(".")[:2])


def test_no_cycle_between_packages():
    """ckpt -> train -> ckpt is a cycle even when no single module imports itself back round."""
    edges: dict[str, set[str]] = {}
    for module, deps in graph().items():
        if layer_of(module) == len(LAYERS) - 1:
            continue  # entry points sit above everything
        for _, dep in deps:
            if package_of(dep) != package_of(module):
                edges.setdefault(package_of(module), set()).add(package_of(dep))
    cycles = [f"{a} <-> {b}" for a in edges for b in edges[a] if a < b and a in edges.get(b, ())]
    assert not cycles, "packages that import each other:\n" + "\n".join(cycles)


def test_the_contract_catches_what_it_should(tmp_path, monkeypatch):
    """Guards the test itself: an upward import and a package cycle in a scratch tree are reported."""
    pkg = tmp_path / "experiment"
    for name, text in {"__init__.py": "", "model/__init__.py": "", "train/__init__.py": "",
                       "model/build.py": "from experiment.train import runner\n",
                       "train/runner.py": "from experiment.model import build\n"}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    with pytest.raises(AssertionError, match="model/build.py:1 imports experiment.train.runner"):
        test_no_upward_import()
    with pytest.raises(AssertionError, match="experiment.model <-> experiment.train"):
        test_no_cycle_between_packages()
