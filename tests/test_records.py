"""One reader and writer per record: the run's logs, the lockfile and the torchrun command line each have one
module that spells them, as ``test_layering.py`` has one rule for imports.

A second module that builds a path to ``run_status.json`` (or the chain log, the saves log, the losses, the
evals, the aside list, the lockfile) by name, spells the torchrun command, or writes the lock is how two copies
drift apart: the Slurm ``--set`` lock that did not reproduce came from such a pair. Each test names the file and
line and the module to go through instead.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "experiment"

# the one module that may name each record's file (experiment/runlog.py: its readers and writers)
RECORD_FILES = ("run_status.json", "chain.jsonl", "saves.jsonl", "losses.jsonl", "eval.jsonl", "aside.jsonl",
                "run.lock.json")
RECORD_HOME = "experiment/runlog.py"
# names of runlog whose files only runlog's own functions read and write
PRIVATE_NAMES = ("STATUS", "SAVES", "CHAIN")
TORCHRUN_HOME = "experiment/torchrun.py"
LOCK_WRITER = ("experiment/launch/finish.py", "experiment/lock/lockfile.py")  # finish_run calls write_run_lock


@functools.cache
def modules() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(ROOT)), ast.parse(p.read_text(), filename=str(p)))
            for p in sorted(PACKAGE.rglob("*.py"))]


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring constants (they may name a file: they are prose)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def code_strings(tree: ast.Module):
    """Every string constant of the code, docstrings left out (prose may name a file)."""
    prose = docstrings(tree)
    return (node for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose)


def names_record(value: str) -> str | None:
    """The record a string is a path to: exactly its name, or a path ending in it (no spaces: not a message)."""
    if " " in value:
        return None
    for name in RECORD_FILES:
        if value == name or value.endswith("/" + name):
            return name
    return None


def test_one_module_names_each_run_record():
    found = []
    for path, tree in modules():
        if path == RECORD_HOME:
            continue
        for node in code_strings(tree):
            name = names_record(node.value)
            if name:
                found.append(f"{path}:{node.lineno} names {name!r}: read or write it through "
                             "experiment/runlog.py (its name: runlog's constants)")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES and \
                    isinstance(node.value, ast.Name) and node.value.id == "runlog":
                found.append(f"{path}:{node.lineno} uses runlog.{node.attr}: use runlog's reader/writer "
                             "(read_status/write_status, read_saves/append_save, read_chain/append_chain)")
            if isinstance(node, ast.ImportFrom) and node.module == "experiment.runlog":
                found += [f"{path}:{node.lineno} imports runlog.{a.name}: use runlog's reader/writer"
                          for a in node.names if a.name in PRIVATE_NAMES]
    assert not found, "a run record named outside its one reader and writer:\n" + "\n".join(found)


def test_one_builder_of_the_torchrun_command():
    found = []
    for path, tree in modules():
        if path == TORCHRUN_HOME:
            continue
        for node in code_strings(tree):
            if node.value == "torch.distributed.run" or node.value.startswith("--rdzv"):
                found.append(f"{path}:{node.lineno} spells the torchrun command ({node.value!r}): "
                             "build it with experiment.torchrun.command")
    assert not found, "\n".join(found)


def test_one_writer_of_the_lock():
    found = []
    for path, tree in modules():
        if path in LOCK_WRITER:
            continue
        for node in ast.walk(tree):
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if name == "write_run_lock":
                found.append(f"{path}:{node.lineno} calls write_run_lock: a lock is written by "
                             "experiment.launch.finish.finish_run (which checks the run finished as recorded)")
            if isinstance(node, ast.ImportFrom):
                found += [f"{path}:{node.lineno} imports write_run_lock: use finish_run"
                          for a in node.names if a.name == "write_run_lock"]
    assert not found, "\n".join(found)


def test_main_only_for_python_dash_m_entry_points():
    """``main`` names a module's ``python -m`` entry point and nothing else (a library function says what it
    does), so ``main`` in a traceback or a grep means one kind of thing."""
    found = []
    for path, tree in modules():
        defines = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        guarded = any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)
        if defines and not guarded and path != "experiment/cli.py":  # cli.main: the console script
            found.append(f"{path}:{defines[0].lineno} defines main() but is no `python -m` entry point: "
                         "name the function for what it does")
    assert not found, "\n".join(found)


def test_the_rules_see_what_they_forbid():
    """The checks find a path to a record, a spelled torchrun, and leave messages and docstrings alone."""
    assert names_record("run_status.json") == "run_status.json"
    assert names_record("logs/chain.jsonl") == "chain.jsonl"
    assert names_record("the run's run_status.json is damaged") is None
    tree = ast.parse('"""a docstring naming run.lock.json"""\nx = folder / "run.lock.json"\n')
    hits = [n.value for n in code_strings(tree) if names_record(n.value)]
    assert hits == ["run.lock.json"]
