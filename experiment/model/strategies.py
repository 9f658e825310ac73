"""The dist_checkpointing save/load strategies every kit checkpoint is written and read with.

Training (``experiment.train.checkpointing``) and conversion (``experiment.ckpt``) must agree on them:
a checkpoint imported from Hugging Face is resumed by the runner and vice versa.
"""

from __future__ import annotations


def dist_strategies():
    """(save, load) strategies: synchronous torch_dist with one writer bucket and one thread per rank, for
    a deterministic file layout and no extra forked writer on CPU hosts."""
    from megatron.core.dist_checkpointing.strategies.torch import (
        TorchDistLoadShardedStrategy,
        TorchDistSaveShardedStrategy,
    )

    return TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=1), TorchDistLoadShardedStrategy()
