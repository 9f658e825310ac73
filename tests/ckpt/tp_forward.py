"""Run under torchrun: import a Hugging Face folder with TP = world size (each rank saving its shards),
then load it back in the same TP layout and write the gathered logits (rank 0).

    torchrun --nproc-per-node 2 tests/ckpt/tp_forward.py HF_DIR CKPT_DIR TOKENS.json OUT.pt
"""

from __future__ import annotations

import json
import os
import sys
import warnings


def main(hf: str, ckpt: str, tokens_file: str, out_file: str) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from experiment.ckpt import compare, hf_import
    from experiment.model import parallel as distributed
    from experiment.model.build import ParallelLayout

    warnings.filterwarnings("ignore")
    tokens = json.loads(open(tokens_file).read())
    layout = ParallelLayout(int(os.environ["WORLD_SIZE"]), 1)
    distributed.initialize(layout)
    hf_import.import_checkpoint(hf_import.plan_import(hf, ckpt, layout), ckpt, layout, show_progress=False)
    model, meta = compare.load_megatron(ckpt, seq_length=len(tokens), layout=layout)
    local = compare.megatron_forward(model, tokens)  # [seq, padded_vocab / tp]
    full = gather_from_tensor_model_parallel_region(local)[:, :meta.vocab_size]
    if dist.get_rank() == 0:
        torch.save(full, out_file)
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
