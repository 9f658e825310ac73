"""The loss megatron's schedule runs: forward step, masked token mean, its mean over data-parallel ranks.

Functions of the batch and the model only (no trainer state), shared by the training step and the held-out
evaluation, which must score tokens the same way.
"""

from __future__ import annotations

from functools import partial


def forward_step(data_iterator, model):
    """megatron's ``forward_step_func``: one micro-batch through the model; the loss function for its output."""
    batch = next(data_iterator)
    batch = {k: v.cuda(non_blocking=True) for k, v in batch.items()}
    output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
    return output, partial(_loss, batch["loss_mask"])


def _loss(loss_mask, output):
    mask = loss_mask.view(-1).float()
    loss = (output.float().view(-1) * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"lm loss": loss.detach().clone()}


def mean_loss(outputs) -> float:
    """Mean of the micro-batch losses, averaged over data-parallel ranks (last pipeline stage holds them)."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if ps.is_pipeline_last_stage(ignore_virtual=True) and outputs:
        value = torch.stack([o["lm loss"].float() for o in outputs]).mean().reshape(1)
    else:
        value = torch.zeros(1, device=device)
    dist.all_reduce(value, group=ps.get_data_parallel_group())
    value /= ps.get_data_parallel_world_size()
    if ps.get_pipeline_model_parallel_world_size() > 1:  # everyone learns the last stage's value
        dist.all_reduce(value, group=ps.get_pipeline_model_parallel_group())
    return float(value.item())
