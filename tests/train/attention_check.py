"""Run as a script (its own process: megatron's parallel state and the CPU layer are process-global):
the same GPTModel weights with megatron's local DotProductAttention and with the kit's SDPA attention
give the same logits and gradients. Prints one JSON line."""

from __future__ import annotations

import json

import torch


def main() -> None:
    from experiment.model import parallel as distributed
    from experiment.model.build import build_gpt_model
    from experiment.model.presets import PRESETS
    from experiment.train.attention import layer_spec

    distributed.initialize(seed=7)
    shape = PRESETS["tiny"]
    local = build_gpt_model(shape, 64, layer_spec=layer_spec("local"), padded_vocab_size=32000)
    sdpa = build_gpt_model(shape, 64, layer_spec=layer_spec("sdpa"), padded_vocab_size=32000)
    sdpa.load_state_dict(local.state_dict())
    tokens = torch.randint(0, 32000, (2, 64), generator=torch.Generator().manual_seed(0))
    position_ids = torch.arange(64).unsqueeze(0).expand(2, -1)
    mask = torch.tril(torch.ones(64, 64, dtype=torch.bool)).logical_not().view(1, 1, 64, 64)
    out = {}
    for name, model in (("local", local), ("sdpa", sdpa)):
        logits = model(tokens, position_ids, mask)
        logits.float().pow(2).mean().backward()
        grad = model.decoder.layers[0].self_attention.linear_qkv.weight.grad
        out[name] = (logits.detach(), grad.detach().clone())
    print(json.dumps({
        "logits_max_diff": (out["local"][0] - out["sdpa"][0]).abs().max().item(),
        "logits_scale": out["local"][0].abs().max().item(),
        "grad_max_diff": (out["local"][1] - out["sdpa"][1]).abs().max().item(),
        "grad_scale": out["local"][1].abs().max().item(),
    }))
    distributed.shutdown()


if __name__ == "__main__":
    main()
