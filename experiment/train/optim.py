"""Optimizer and learning-rate schedule: megatron.core's distributed Adam and OptimizerParamScheduler.

The kit maps the folder's ``[training]`` section onto megatron's configs and nothing more, so the
numerics are exactly Megatron-LM's (weight decay off for biases and norms, fp32 main params, grad
clipping by global norm across model-parallel ranks).
"""

from __future__ import annotations


def build_optimizer(ddp_model, training, *, bf16: bool):
    """megatron.core's optimizer with the distributed optimizer (states sharded over data parallel)."""
    import torch
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = OptimizerConfig(
        optimizer="adam",
        lr=training.lr,
        min_lr=training.min_lr,
        weight_decay=training.weight_decay,
        adam_beta1=training.adam_beta1,
        adam_beta2=training.adam_beta2,
        adam_eps=1e-8,
        clip_grad=training.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=True,
    )
    return get_megatron_optimizer(config, [ddp_model])


def build_scheduler(optimizer, training, train_iters: int):
    """Warmup then constant/linear/cosine/WSD decay, stepped once per iteration in units of samples
    (Megatron-LM's convention, so a changed global batch size keeps the schedule's token positions)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    gbs = training.global_batch_size
    wsd = training.lr_wsd_decay_iters
    if training.lr_decay_style == "WSD" and wsd is None:
        wsd = max(1, train_iters // 10)  # MiniCPM's default: decay over the last 10%
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if training.lr_warmup_iters else training.lr,
        max_lr=training.lr,
        min_lr=training.min_lr,
        lr_warmup_steps=training.lr_warmup_iters * gbs,
        lr_decay_steps=train_iters * gbs,
        lr_decay_style=training.lr_decay_style,
        start_wd=training.weight_decay,
        end_wd=training.weight_decay,
        wd_incr_steps=train_iters * gbs,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
        wsd_decay_steps=wsd * gbs if wsd is not None else None,
        lr_wsd_decay_style="cosine" if training.lr_decay_style == "WSD" else None,
    )
