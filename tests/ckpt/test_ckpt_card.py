"""Export's generation_config.json and model card README.md: transformers and huggingface_hub read them back;
a training folder's card names its base model, data signatures, token counts and lockfile hash."""

from __future__ import annotations

import inspect
import json

from huggingface_hub import ModelCard
from transformers import GenerationConfig, PreTrainedModel

from experiment.ckpt import card, hf_export, hf_import
from experiment.ckpt.meta import read_meta
from experiment.folder import load_schema
from experiment.lock import lockfile
from experiment.lock.hashing import hash_file
from experiment.model.build import ParallelLayout
from tests.ckpt.tiny import make_hf


def test_default_shard_size_is_transformers(tmp_path):
    default = inspect.signature(PreTrainedModel.save_pretrained).parameters["max_shard_size"].default
    from transformers.utils.hub import convert_file_size_to_int

    assert default == card.SAVE_PRETRAINED_MAX_SHARD  # the pinned transformers' own default
    assert card.transformers_max_shard_bytes() == convert_file_size_to_int(default) == 50 * 10**9
    assert inspect.signature(hf_export.export_checkpoint).parameters["max_shard_bytes"].default is None


def test_export_writes_a_generation_config_and_a_card_that_parse(tmp_path, llama_tokenizer_dir, dist1):
    hf = make_hf("llama3.1", tmp_path / "hf", llama_tokenizer_dir)
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    hf_import.import_checkpoint(hf_import.plan_import(hf, ckpt, ParallelLayout()), ckpt, ParallelLayout(),
                                show_progress=False)
    hf_export.export_checkpoint(ckpt, back, show_progress=False)
    assert sorted(p.name for p in back.glob("*.safetensors")) == ["model.safetensors"]  # one 50GB-bounded shard
    gen = GenerationConfig.from_pretrained(back)
    meta = read_meta(ckpt)
    assert gen.bos_token_id == meta.hf_config["bos_token_id"] and gen.eos_token_id == meta.hf_config["eos_token_id"]
    parsed = ModelCard.load(back / "README.md")
    assert parsed.data.base_model == "hf" and parsed.data.library_name == "transformers"
    assert "midtrain-kit" in parsed.data.tags and "without further training" in parsed.text
    assert str(tmp_path) not in (back / "README.md").read_text()


def test_card_of_a_training_folder_names_data_tokens_and_lock(project, tmp_path, llama_tokenizer_dir, dist1):
    hf = make_hf("llama3.1", tmp_path / "hf", llama_tokenizer_dir)
    ckpt = tmp_path / "ckpt"
    hf_import.import_checkpoint(hf_import.plan_import(hf, ckpt, ParallelLayout()), ckpt, ParallelLayout(),
                                show_progress=False)
    meta = read_meta(ckpt)
    tiny = project / "training" / "tiny"
    lock = lockfile.write_run_lock(load_schema(tiny, require_artifacts=False))
    text = card.model_card(meta, tiny / "checkpoints", 4)
    parsed = ModelCard(text)
    assert parsed.data.datasets == ["tiny"] and parsed.data.base_model == "hf"
    assert "| tokens trained | 512 (4 x 4 x 32) |" in parsed.text
    sig = json.loads((project / "data_signatures" / "tiny.json").read_text())
    code_tokens = sum(s["tokens"] for s in sig["shards"] if s["domain"] == "code")
    assert f"| tiny | en | code | 24 | {code_tokens:,} |" in parsed.text
    assert hash_file(lock, "blake3") in parsed.text
    assert str(project) not in text
