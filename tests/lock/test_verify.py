"""The lockfile of a tiny real folder, and `reproduce`'s verification naming each kind of tampering."""

from __future__ import annotations

import json
import os
from pathlib import Path

from experiment.lock import lockfile, reproduce, verify
from experiment.lock.hashing import HashCache
from experiment.lock.records import RunLock
from experiment.mixture.checks import load_checked


def _folder(project: Path):
    return verify.load_folder(project / "training" / "tiny")


def _lock(project: Path) -> RunLock:
    folder = _folder(project)
    det = verify.determinism_now(folder)
    path = lockfile.write_run_lock(folder, determinism_env=det, launch={"launcher": "local"})
    return lockfile.read_lock(path)


def _verify(project: Path, lock: RunLock, environ=None, **kw) -> list[verify.Finding]:
    return verify.verify(lock, _folder(project), cache=HashCache(None), environ=environ or {}, **kw)


def test_lock_is_canonical_without_host_paths(project):
    folder = _folder(project)
    first = lockfile.write_run_lock(folder).read_bytes()
    second = lockfile.write_run_lock(folder).read_bytes()
    assert first == second
    text = first.decode()
    assert str(project) not in text and str(Path.home()) + "/" not in text
    raw = json.loads(text)
    assert list(raw) == sorted(raw)
    lock = lockfile.parse(raw)
    assert len(lock.data.shards) == 3
    assert lock.data.blend.available and len(lock.data.blend.entries) == 3
    assert all(isinstance(w, float) for _, w in lock.data.blend.entries)
    assert lock.environment.containerized is False and lock.environment.torch.startswith("2.13.0")
    assert lock.tokenizer["../../data_signatures/tiny.json"]["name"] == "tokenizer.model.v1"
    assert set(lock.folder.files) == {"experiment.toml", "data_ratio.json", "README.md"}


def test_untouched_folder_verifies(project):
    lock = _lock(project)
    assert _verify(project, lock) == []


def test_one_flipped_byte_of_a_shard_is_named(project):
    lock = _lock(project)
    shard = sorted((project / "data" / "tiny").glob("en_docs_*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    findings = _verify(project, lock)
    assert [(f.area, f.what) for f in findings] == [("data", f"../../data_signatures/tiny.json::{shard.name}")]
    assert findings[0].blocking and "bytes changed" in findings[0].why and "size" not in findings[0].why


def test_swapped_tokenizer_is_named(project, sp_model_path):
    lock = _lock(project)
    sig_path = project / "data_signatures" / "tiny.json"
    sig = json.loads(sig_path.read_text())
    sig["tokenizer"].update(name="tokenizer.model.v3", sha256="0" * 64)
    sig_path.write_text(json.dumps(sig, indent=1))
    findings = _verify(project, lock)
    tok = [f for f in findings if f.area == "tokenizer"]
    assert len(tok) == 1 and tok[0].blocking
    assert "name=tokenizer.model.v1" in tok[0].expected and "name=tokenizer.model.v3" in tok[0].found
    assert "sha256=" in tok[0].found
    assert all(f.area in ("tokenizer", "signature") for f in findings)


def test_edited_data_ratio_is_named_with_the_key_and_the_blend(project):
    lock = _lock(project)
    (project / "training/tiny/data_ratio.json").write_text(json.dumps({"code": 1.0, "docs": 3.0}))
    findings = _verify(project, lock)
    ratio = [f for f in findings if f.what == "data_ratio.json"]
    assert len(ratio) == 1 and ratio[0].blocking and "docs: 2.0 -> 3.0" in ratio[0].why
    assert any(f.area == "blend" and f.blocking for f in findings)


def test_reformatted_data_ratio_is_harmless(project):
    lock = _lock(project)
    (project / "training/tiny/data_ratio.json").write_text('{"docs":2.0,   "code":1.0}')
    findings = _verify(project, lock)
    assert [(f.what, f.blocking) for f in findings] == [("data_ratio.json", False)]
    assert "parsed content is identical" in findings[0].why


def test_reordered_signature_is_harmless_and_says_why(project):
    lock = _lock(project)
    sig_path = project / "data_signatures" / "tiny.json"
    sig = json.loads(sig_path.read_text())
    sig["shards"].reverse()
    sig_path.write_text(json.dumps(sig, indent=2))
    findings = _verify(project, lock)
    assert [(f.area, f.blocking) for f in findings] == [("signature", False)]
    assert "reordered" in findings[0].why and "same order" in findings[0].why


def _rename(project: Path, old_split: str, new_split: str, domain: str) -> tuple[str, str]:
    root = project / "data" / "tiny"
    old = next(p.stem for p in root.glob(f"en_{domain}_main_split_{old_split}_*.bin"))
    new = old.replace(f"_split_{old_split}_", f"_split_{new_split}_")
    for ext in (".bin", ".idx"):
        os.rename(root / (old + ext), root / (new + ext))
    sig_path = project / "data_signatures" / "tiny.json"
    sig = json.loads(sig_path.read_text())
    for s in sig["shards"]:
        if s["prefix"] == old:
            s["prefix"] = new
    sig_path.write_text(json.dumps(sig, indent=1))
    return old, new


def test_renamed_shard_with_same_bytes_and_place_is_harmless(project):
    lock = _lock(project)
    old, new = _rename(project, "0", "9", "docs")
    findings = _verify(project, lock)
    data = [f for f in findings if f.area == "data"]
    assert {f.what.rsplit("::", 1)[1] for f in data} == {old + ".bin", old + ".idx"}
    assert all(not f.blocking and "renamed to" in f.found and new in f.found for f in data)
    assert not [f for f in findings if f.blocking]


def test_renamed_shard_that_moves_in_the_blend_blocks(project):
    lock = _lock(project)
    old, new = _rename(project, "0", "5", "code")
    findings = _verify(project, lock)
    data = [f for f in findings if f.area == "data"]
    assert data and all(f.blocking and "place in the sorted blend" in f.why for f in data)
    assert any(f.area == "blend" for f in findings)


def test_determinism_variable_in_the_shell_is_named_and_not_in_force(project):
    lock = _lock(project)
    findings = _verify(project, lock, environ={"NCCL_ALGO": "Tree", "HOME": "/root"})
    assert [(f.area, f.what, f.expected, f.found) for f in findings] == [
        ("determinism", "NCCL_ALGO", "Ring", "Tree (your environment)")]
    assert not findings[0].blocking and "exports NCCL_ALGO=Ring" in findings[0].why


def test_determinism_switched_off_names_each_variable(project):
    lock = _lock(project)
    toml = project / "training/tiny/experiment.toml"
    toml.write_text(toml.read_text().replace("deterministic = true", "deterministic = false"))
    findings = _verify(project, lock)
    folder = [f for f in findings if f.area == "folder"]
    assert len(folder) == 1 and "training.deterministic: true -> false" in folder[0].why
    det = {f.what: f for f in findings if f.area == "determinism"}
    assert det["NCCL_ALGO"].expected == "Ring" and det["NCCL_ALGO"].found == "None" and det["NCCL_ALGO"].blocking
    assert set(det) == set(lock.determinism) and lock.determinism["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_mirror_keeps_the_toml_and_resolves_every_path(project, tmp_path):
    folder = _folder(project)
    mirror = reproduce.mirror_folder(folder, tmp_path / "work")
    assert (mirror / "experiment.toml").read_bytes() == (folder.path / "experiment.toml").read_bytes()
    again = load_checked(mirror)
    assert again.signature_paths[0].resolve() == folder.signature_paths[0].resolve()
    assert lockfile.blend_section(again) == lockfile.blend_section(folder)


def test_data_root_moves_the_shards(project, tmp_path):
    lock = _lock(project)
    moved = tmp_path / "elsewhere"
    (project / "data" / "tiny").rename(moved)
    gone = _verify(project, lock)
    assert gone and all(f.area in ("data", "blend") and f.blocking for f in gone)
    assert any(f.found == "missing" for f in gone)
    assert _verify(project, lock, data_root=moved) == []
    mirror = reproduce.mirror_folder(_folder(project), tmp_path / "work", data_root=moved)
    again = load_checked(mirror)
    assert lockfile.data_section(again, HashCache(None))["shards"] == lock.dump()["data"]["shards"]
