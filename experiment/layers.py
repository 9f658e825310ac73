"""The kit's layers, bottom up, and every module's imports of the kit, read from the source with ``ast``.

One table serves two readers: ``tests/test_layering.py`` (no upward import, no cycle) and ``experiment.docs``
(ARCHITECTURE.md's layer table and module map), so the picture in the docs is the rule the tests enforce.
A new top-level module or package gets its row here. Stdlib only.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Layer:
    name: str
    modules: tuple[str, ...]  # module or package names; the longest matching prefix places a module
    owns: str  # what the layer holds, for ARCHITECTURE.md


# Lowest first. A module may import from its own layer and from any layer listed before it.
LAYERS: tuple[Layer, ...] = (
    Layer("core", ("experiment", "experiment.atomic", "experiment.errors", "experiment.determinism",
                   "experiment.megatron_import", "experiment.system_packages", "experiment.engine",
                   "experiment.runlog", "experiment.summary", "experiment.launcher_names", "experiment.duration",
                   "experiment.hashing", "experiment.short_lived", "experiment.torchrun", "experiment.layers"),
          "atomic writes, the `KitError` root, the deterministic-run environment, the container-engine "
          "environment, the run's records (one reader and writer each), the opt-in megatron import hook, a short "
          "command's fast exit, result tables, the declared Debian packages, the launcher and scheduler names, "
          "walltime parsing, the one hasher, the torchrun command line, this layer table"),
    Layer("model", ("experiment.model",),
          "model shapes and presets, the TP/PP check, GPTModel construction, process groups, the CPU "
          "compatibility layer, the checkpoint strategies"),
    Layer("folder", ("experiment.folder",),
          "the `experiment.toml` schema, `Problem`, `--set` overrides, `check_schema`/`load_schema`"),
    Layer("data", ("experiment.data",),
          "readers, encoders, shards, names, signatures, merge, dedup, and `experiment data`"),
    Layer("mixture", ("experiment.mixture",),
          "mixing inputs, the planner, checks (`load_checked`: schema + mixture), outputs, report, and "
          "`experiment mix`"),
    Layer("lock", ("experiment.lock",),
          "the hash cache, typed lock records, the lockfile, verify and reproduce, environment identity, "
          "env locks, image build, and `experiment reproduce`"),
    Layer("ckpt", ("experiment.ckpt",),
          "HF <-> Megatron conversion (model families), logits check, GGUF, export card, and `experiment ckpt`"),
    Layer("train", ("experiment.train",),
          "the runner, data loading, optimizer, checkpointing, retention, metrics, trackers, signals, time "
          "budget, throughput/MFU, watchdog, restart"),
    Layer("launch", ("experiment.launch",),
          "the launcher registry, job scripts, job chains, finishing a run (the one lock writer), container "
          "runs, a local Slurm, and `experiment run`, `experiment status`, `experiment lock write`"),
    Layer("entry", ("experiment.cli", "experiment.demo", "experiment.docs", "experiment.compare",
                    "experiment.report", "experiment.evaluate"),
          "the `experiment` app, the generated docs, run comparison, the HTML report, the demo, lm-eval "
          "evaluation"),
)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    """Index of the layer a module belongs to (the longest matching prefix wins)."""
    best, best_len = None, -1
    for index, layer in enumerate(LAYERS):
        for prefix in layer.modules:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                if prefix == "experiment" and module != "experiment":
                    continue  # the bare package name matches only experiment/__init__.py
                best, best_len = index, len(prefix)
    if best is None:
        raise LookupError(f"{module}: not in any layer of experiment/layers.py (add it to LAYERS)")
    return best


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, imported module) for every ``experiment`` import in the file (also inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "experiment"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "experiment":
            for alias in node.names:  # `from experiment.x import y` may name the module experiment.x.y
                candidate = f"{node.module}.{alias.name}"
                found.append((node.lineno, candidate if is_module(candidate, root) else node.module))
    return found


def is_module(module: str, root: Path = ROOT) -> bool:
    """Whether a dotted name is a module or package of the tree under ``root`` (not a name inside one)."""
    rel = Path(*module.split("."))
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def graph(root: Path = ROOT) -> dict[str, list[tuple[int, str]]]:
    """Every module of ``root/experiment`` -> its imports of the kit."""
    return {module_name(p, root): imports(p, root) for p in sorted((root / "experiment").rglob("*.py"))}


def package_of(module: str) -> str:
    """The subpackage a module belongs to (experiment.train.runner -> experiment.train)."""
    return ".".join(module.split(".")[:2])


def layers_imported(root: Path = ROOT) -> dict[str, list[str]]:
    """Layer -> the other layers its modules import today, bottom up (ARCHITECTURE.md's last column)."""
    seen: dict[int, set[int]] = {i: set() for i in range(len(LAYERS))}
    for module, deps in graph(root).items():
        mine = layer_of(module)
        seen[mine] |= {layer_of(d) for _, d in deps} - {mine}
    return {LAYERS[i].name: [LAYERS[j].name for j in sorted(seen[i])] for i in seen}
