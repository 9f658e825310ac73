"""The logits check: run the Hugging Face model and the Megatron GPTModel on the same token batches.

A converted checkpoint that loads but computes something else is the expensive failure (a whole run
trained on a broken base), so ``experiment ckpt check`` measures it: max absolute logit difference,
mean KL(HF || Megatron) per token, and top-1 agreement, over the tokenizer's real vocabulary (Megatron's
padded rows are dropped). Both sides run in float32 on the CPU.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

from experiment.ckpt.meta import CheckpointError, CheckpointMeta, iteration_path, read_meta

DEFAULT_MAX_ABS = 1e-3
DEFAULT_MIN_TOP1 = 0.99


@dataclass(frozen=True)
class Tolerance:
    max_abs_diff: float = DEFAULT_MAX_ABS
    min_top1: float = DEFAULT_MIN_TOP1
    max_kl: float = 1e-5


@dataclass(frozen=True)
class CheckReport:
    tokens: int
    max_abs_diff: float
    mean_kl: float
    top1_agreement: float
    logit_scale: float  # max |logit| of the HF model, to read max_abs_diff against

    def passes(self, tol: Tolerance) -> bool:
        return self.max_abs_diff <= tol.max_abs_diff and self.top1_agreement >= tol.min_top1 and self.mean_kl <= tol.max_kl


def default_text() -> str:
    """Real English text that every Python ships (PEP 20), for a check without a --text file."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the poem
        import this
    return codecs.decode(this.s, "rot13")


def token_batches(tokenizer_dir: str | Path, text: str, seq_length: int, batches: int) -> list[list[int]]:
    """Cut the tokenized text into up to ``batches`` sequences of ``seq_length`` tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise CheckpointError("the check text tokenizes to fewer than 2 tokens; fix: pass a longer --text file")
    seqs = [ids[i:i + seq_length] for i in range(0, len(ids), seq_length)][:batches]
    return [s for s in seqs if len(s) == len(seqs[0])] or seqs[:1]


def hf_logits(hf_dir: str | Path, batches: list[list[int]]):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.tensor([b])).logits.float() for b in batches], dim=1)[0]


def load_megatron(ckpt_dir: str | Path, iteration: int | None = None, seq_length: int = 4096, layout=None):
    """The GPTModel of a kit checkpoint (saved in any TP/PP layout) for this rank of ``layout``
    (default TP=1/PP=1), in float32. Needs ``experiment.model.parallel.initialize(layout)``."""
    import torch
    from megatron.core import dist_checkpointing

    from experiment.ckpt.conversion import in_process_strategies
    from experiment.model.build import ParallelLayout, build_gpt_model

    meta = read_meta(ckpt_dir)
    model = build_gpt_model(meta.shape, seq_length, layout or ParallelLayout(), padded_vocab_size=meta.padded_vocab_size,
                            params_dtype=torch.float32, perform_initialization=False)
    _, load_strategy = in_process_strategies()
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(iteration_path(ckpt_dir, iteration)),
                                    sharded_strategy=load_strategy)
    model.load_state_dict(state["model"], strict=True)
    model.eval()
    return model, meta


def megatron_forward(model, tokens: list[int]):
    """Logits [seq, padded_vocab] of one sequence (causal mask built here: no fused kernels on CPU)."""
    import torch

    n = len(tokens)
    device = next(model.parameters()).device  # CPU here; the GPU on a CUDA host
    ids = torch.tensor([tokens], device=device)
    pos = torch.arange(n, device=device).unsqueeze(0)
    mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=device), diagonal=1)[None, None]  # True = masked
    with torch.no_grad():
        return model(ids, pos, mask).float()[0].cpu()


def megatron_logits(model, meta: CheckpointMeta, batches: list[list[int]]):
    import torch

    return torch.cat([megatron_forward(model, b)[:, :meta.vocab_size] for b in batches], dim=0)


def compare_logits(ref, got) -> CheckReport:
    """Both [tokens, vocab] float32."""
    import torch

    if ref.shape != got.shape:
        raise CheckpointError(f"logit shapes differ: HF {tuple(ref.shape)} vs Megatron {tuple(got.shape)}")
    logp, logq = torch.log_softmax(ref.double(), -1), torch.log_softmax(got.double(), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean().item()
    return CheckReport(
        tokens=ref.shape[0],
        max_abs_diff=(ref - got).abs().max().item(),
        mean_kl=max(kl, 0.0),
        top1_agreement=(ref.argmax(-1) == got.argmax(-1)).double().mean().item(),
        logit_scale=ref.abs().max().item(),
    )


def check_logits(hf_dir: str | Path, ckpt_dir: str | Path, text: str, *, seq_length: int = 128,
                 batches: int = 4, iteration: int | None = None) -> CheckReport:
    """Both models on the same token batches (tokenized with the HF folder's tokenizer)."""
    hf_dir = Path(hf_dir)
    seqs = token_batches(hf_dir, text, seq_length, batches)
    ref = hf_logits(hf_dir, seqs)
    model, meta = load_megatron(ckpt_dir, iteration, seq_length=max(seq_length, 1))
    got = megatron_logits(model, meta, seqs)
    return compare_logits(ref, got)
