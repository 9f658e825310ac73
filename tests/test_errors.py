"""One error root (KitError) and one CLI handler: each command, given a bad input, prints one message
naming the file (and the fix), exits non-zero, never shows a traceback, and writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiment.errors import KitError

ROOT = Path(__file__).resolve().parent.parent


def _error_classes() -> list[tuple[str, str]]:
    """(module, class) of every public exception class defined under experiment/ (named ``...Error``, or based
    on an ``...Error``/``...Exception`` class), found by reading the source."""
    import ast

    found = []
    for path in sorted((ROOT / "experiment").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
            if node.name.endswith("Error") or any(b.endswith(("Error", "Exception")) for b in bases):
                found.append((module, node.name))
    return found


def test_every_kit_exception_class_derives_from_kit_error():
    import importlib

    from experiment.data.errors import DataError
    from experiment.lock.lockfile import LockError

    classes = _error_classes()
    assert len(classes) >= 18, classes  # the scan found the kit's error classes
    outside = [f"{m}.{c}" for m, c in classes if not issubclass(getattr(importlib.import_module(m), c), KitError)]
    assert outside == [], f"error classes outside the one root KitError: {outside}"
    err = DataError("a.jsonl", "'text' is int", "store text as a string", line=3)
    assert err.lines() == ["a.jsonl:3: 'text' is int", "fix: store text as a string"]
    assert LockError("x.json: damaged", file="x.json", field="outputs", fix="restore it").lines() == \
        ["x.json: damaged (field: outputs)", "fix: restore it"]


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "notlock.json").write_text(json.dumps({"name": "x", "steps": [1, 2]}))
    (d / "broken.json").write_text('{"lock_version": ')
    (d / "list.json").write_text("[1, 2]")
    (d / "text.txt").write_text("hello\n")
    (d / "empty").mkdir()
    (d / "shards").mkdir()
    (d / "shards" / "a.jsonl").write_text('{"text": 1}\n')
    return d


CASES = {  # command -> (argv with {bad} for the folder, the file the message must name)
    "reproduce: JSON that is not a lockfile": (["reproduce", "{bad}/notlock.json"], "notlock.json"),
    "reproduce: a JSON list": (["reproduce", "{bad}/list.json"], "list.json"),
    "reproduce: broken JSON": (["reproduce", "{bad}/broken.json"], "broken.json"),
    "reproduce: missing file": (["reproduce", "{bad}/absent.json"], "absent.json"),
    "ckpt check: missing HF folder": (["ckpt", "check", "{bad}/no-hf", "{bad}/empty"], "no-hf"),
    "ckpt import: a text file": (["ckpt", "import", "{bad}/text.txt", "{bad}/out-import"], "text.txt"),
    "ckpt export: not a checkpoint": (["ckpt", "export", "{bad}/empty", "{bad}/out-export"], "kit_checkpoint.json"),
    "check: empty folder": (["check", "{bad}/empty"], "experiment.toml"),
    "mix: empty folder": (["mix", "{bad}/empty"], "experiment.toml"),
    "run: empty folder": (["run", "{bad}/empty"], "experiment.toml"),
    "lock write: empty folder": (["lock", "write", "{bad}/empty"], "experiment.toml"),
    "data count: not shards": (["data", "count", "{bad}/text.txt"], "text.txt"),
    "data merge: unnamed input": (["data", "merge", "{bad}/shards", "-o", "{bad}/out-merge"], "a.jsonl"),
    "data dedup: non-string text": (["data", "dedup", "{bad}/shards", "-o", "{bad}/out-dedup"], "a.jsonl"),
    "data signature: no tokenizer record": (["data", "signature", "{bad}/empty", "--name", "x",
                                             "--out-dir", "{bad}/out-sig"], "tokenizer_info.json"),
    "demo corpus: a file as the folder": (["demo", "corpus", "{bad}/text.txt"], "text.txt"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_prints_one_clean_message(case, bad):
    argv, names = CASES[case]
    argv = [a.format(bad=bad) for a in argv]
    res = subprocess.run([sys.executable, "-m", "experiment.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    said = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, said
    assert "Traceback" not in said and "[rank" not in said, said
    assert names in said and "fix" in said.lower(), said
    assert not list(bad.glob("out-*")), "a refused command wrote output"


def _real_full_disk_error() -> OSError:
    """The kernel's own ENOSPC: /dev/full refuses every write."""
    with pytest.raises(OSError) as info, open("/dev/full", "w") as f:
        f.write("x")
        f.flush()
    return info.value


def test_a_full_disk_is_found_behind_the_wrappers_libraries_put_around_it(tmp_path):
    from experiment.errors import disk_full

    full = _real_full_disk_error()
    assert full.errno == 28
    try:  # megatron's checkpoint writer: RuntimeError("Worker failure: ...") from the OSError
        raise RuntimeError(f"Worker failure: {full}") from full
    except RuntimeError as wrapped:
        chained = wrapped
    pickled = RuntimeError(f"Worker failure: {full}")  # after gather_object: the message, no chain
    for err in (full, chained, pickled):
        found = disk_full(err, [tmp_path])
        assert found is not None and found.file == str(tmp_path), err
        assert f"df -h {tmp_path}" in found.fix and "run the same command again" in found.fix
    named = disk_full(OSError(28, "No space left on device", str(tmp_path / "x.bin")), [Path("/")])
    assert named.file == str(tmp_path / "x.bin")  # a named file wins over the stand-in places
    # torch's zip writer says only "unexpected pos": a full disk only where the place really is (nearly) full
    assert disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
                     [tmp_path]) is None
    assert disk_full(ValueError("bad value"), [tmp_path]) is None
