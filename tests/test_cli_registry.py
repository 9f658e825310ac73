"""The top-level command imports only the module of the command it runs, and that table is right."""

from __future__ import annotations

import importlib
import subprocess
import sys

import typer

from experiment import cli


def _names(app: typer.Typer) -> set[str]:
    return {c.name or c.callback.__name__ for c in app.registered_commands} | {g.name for g in app.registered_groups}


def test_command_modules_table_matches_what_each_module_registers():
    for module, names in cli.COMMAND_MODULES.items():
        app = typer.Typer()
        importlib.import_module(module).register(app)
        assert _names(app) == set(names), f"{module} registers {_names(app)}, COMMAND_MODULES says {names}"


def test_modules_for_a_command_line():
    assert cli.modules_for(["data", "tokenize", "x"]) == ["experiment.data.cli"]
    assert cli.modules_for(["lock", "write"]) == ["experiment.launch.cli"]
    assert cli.modules_for(["reproduce", "x"]) == ["experiment.lock.cli"]
    assert cli.modules_for(["check", "training/demo"]) == []
    assert cli.modules_for(["--help"]) == list(cli.COMMAND_MODULES)
    assert cli.modules_for(["no-such-command"]) == list(cli.COMMAND_MODULES)


def test_data_command_does_not_import_the_lockfile_or_report_code():
    code = ("import sys; sys.argv = ['experiment', 'data', 'tokenize', '--help']\n"
            "from experiment.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('experiment.lock', 'experiment.report', 'experiment.compare', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_full_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "experiment.cli", "--help"], capture_output=True, text=True,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
                         timeout=300).stdout
    for names in cli.COMMAND_MODULES.values():
        for name in names:
            assert f" {name} " in out, name
