"""Where a run's state comes from: its own newest checkpoint, else the base checkpoint's weights, else scratch.

Also what the run's checkpoints carry from the base: its ``kit_checkpoint.json`` (with this run's layout) and
its tokenizer, so any iteration exports to a complete Hugging Face folder. Apart from the runner because the
order of preference and the base's record (``logs/base_checkpoint.json``) are one decision, made once per start.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from experiment.train import checkpointing as ckpt
from experiment.train.checkpointing import TrainState
from experiment.train.console import say


def load_state(save_dir: Path, log_dir: Path, base_dir: Path | None, gpt, optimizer, scheduler, *,
               rank: int) -> TrainState:
    """State: the run's own latest checkpoint > the base checkpoint > scratch. Collective."""
    from experiment.train.walltime import recorded_hashes

    state, notes = ckpt.load_training(save_dir, gpt, optimizer, scheduler, log_dir=log_dir,
                                      recorded=recorded_hashes(log_dir))
    for note in notes:
        say(f"WARNING: {note}")
    if state is not None:
        say(f"resumed from {ckpt.iteration_dir(save_dir, state.iteration)} "
            f"(iteration {state.iteration}, {state.consumed_samples} samples consumed)")
    elif base_dir is not None:
        it, base_folder = ckpt.load_base(base_dir, gpt)
        # a fresh copy of the loaded weights into the optimizer's fp32 main params
        optimizer.reload_model_params()
        digest = ckpt.content_hash(base_folder) if rank == 0 else ""
        say(f"base checkpoint loaded: {base_folder} (iteration {it}) {digest}")
        if rank == 0:
            (log_dir / "base_checkpoint.json").write_text(json.dumps(
                {"path": str(base_folder), "iteration": it, "hash": digest}, indent=1) + "\n")
        state = TrainState()
    else:
        say("training from scratch (checkpoint.from_scratch = true)")
        state = TrainState()
    return state


def checkpoint_meta(folder, shape, padded_vocab: int, base_dir: Path | None, bf16: bool, layout) -> str:
    """``kit_checkpoint.json`` for the run's checkpoints: the base's, with this run's layout."""
    from experiment.ckpt import meta as ckpt_meta

    if base_dir is not None:
        meta = ckpt_meta.read_meta(base_dir)
    else:
        meta = ckpt_meta.CheckpointMeta(
            shape=shape, vocab_size=shape.vocab_size, padded_vocab_size=padded_vocab, family="llama",
            hf_architecture="LlamaForCausalLM", hf_config={}, dtype="bfloat16" if bf16 else "float32",
            source=f"from_scratch:{folder.config.name}", source_hash="none",
        )
    meta = meta.model_copy(update={"saved_layout": {"tensor_parallel": layout.tensor_parallel,
                                                    "pipeline_parallel": layout.pipeline_parallel}})
    return meta.to_json()


def copy_tokenizer(base_dir: Path, save_dir: Path) -> None:
    """The base's tokenizer files travel with the run's checkpoints, so `experiment ckpt export` of any
    iteration gives a complete Hugging Face folder. Copied once, through a temporary name."""
    src, dst = base_dir / "tokenizer", save_dir / "tokenizer"
    if not src.is_dir() or dst.is_dir():
        return
    save_dir.mkdir(parents=True, exist_ok=True)
    tmp = save_dir / ".tokenizer.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)
