"""The output layer and the cross-entropy in one chunked pass (``training.fusions = ["linear-cross-entropy"]``):
the [tokens, vocabulary] logits are never held whole, only one chunk of tokens at a time.

At 1B with a 128k vocabulary and micro-batch 8 (16k tokens), megatron's path keeps bf16 logits, their fp32
copy and the softmax for the backward pass: about 20 GB and several passes over it. Here each chunk's logits
are computed, reduced to a log-sum-exp and the target's logit, and dropped; the backward pass computes them
again chunk by chunk and forms both gradients from the softmax in place (one more output-layer matmul, the
price of the memory; the GPU check measures whether it pays). The per-token loss comes back as megatron's
does (``[batch, seq]``, fp32), so the kit's masked mean, and its gradient, are unchanged. Tensor parallelism 1
only (the folder refuses more): a vocabulary split over ranks needs a cross-rank log-sum-exp.
"""

from __future__ import annotations

import functools

CHUNK_TOKENS = 4096  # rows of logits alive at once: 4096 x 128k x 4 B = 2 GB in fp32


@functools.cache
def _function():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """loss_i = logsumexp(h_i W^T) - (h_i W^T)[y_i], chunked over tokens i."""

        @staticmethod
        def forward(ctx, hidden, weight, labels, chunk: int):
            n = hidden.shape[0]
            losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
            lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
            for s in range(0, n, chunk):
                logits = (hidden[s:s + chunk] @ weight.t()).float()
                lse[s:s + chunk] = torch.logsumexp(logits, dim=-1)
                target = logits.gather(1, labels[s:s + chunk, None]).squeeze(1)
                losses[s:s + chunk] = lse[s:s + chunk] - target
            ctx.save_for_backward(hidden, weight, labels, lse)
            ctx.chunk = chunk
            return losses

        @staticmethod
        def backward(ctx, grad):
            hidden, weight, labels, lse = ctx.saved_tensors
            d_hidden = torch.empty_like(hidden)
            d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            for s in range(0, hidden.shape[0], ctx.chunk):
                h = hidden[s:s + ctx.chunk]
                p = ((h @ weight.t()).float() - lse[s:s + ctx.chunk, None]).exp_()  # softmax, in place
                rows = torch.arange(p.shape[0], device=p.device)
                p[rows, labels[s:s + ctx.chunk]] -= 1.0
                p.mul_(grad[s:s + ctx.chunk, None])
                p = p.to(hidden.dtype)
                d_hidden[s:s + ctx.chunk] = p @ weight
                d_weight.add_(p.t() @ h)
            return d_hidden, d_weight.to(weight.dtype), None, None

    return LinearCrossEntropy


def linear_cross_entropy(hidden, weight, labels, chunk: int = CHUNK_TOKENS):
    """Per-token loss of ``hidden`` [s, b, h] through ``weight`` [vocab, h] against ``labels`` [b, s]: [b, s]."""
    s, b, h = hidden.shape
    flat = hidden.transpose(0, 1).reshape(b * s, h)  # token order of labels
    return _function().apply(flat, weight, labels.reshape(-1), chunk).view(b, s)


class _Hidden:
    """What the output layer hands GPTModel on the fused path: the hidden states and the weight, not logits."""

    def __init__(self, hidden, weight):
        self.hidden, self.weight = hidden, weight


@functools.cache
def model_class():
    """megatron's GPTModel with the fused output layer + cross-entropy where labels are given (training and
    evaluation); without labels (logits wanted) it is megatron's own path. Same parameters, same checkpoint."""
    from megatron.core.models.gpt import GPTModel

    class LinearCrossEntropyGPTModel(GPTModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._fuse_loss = False
            if self.post_process:
                layer, plain = self.output_layer, self.output_layer.forward

                def forward(hidden, weight=None, runtime_gather_output=None):
                    if not self._fuse_loss:
                        return plain(hidden, weight=weight, runtime_gather_output=runtime_gather_output)
                    return _Hidden(hidden, layer.weight if weight is None else weight), None

                layer.forward = forward

        def forward(self, *args, labels=None, **kwargs):
            self._fuse_loss = labels is not None
            try:
                return super().forward(*args, labels=labels, **kwargs)
            finally:
                self._fuse_loss = False

        def compute_language_model_loss(self, labels, logits):
            if isinstance(logits, _Hidden):
                return linear_cross_entropy(logits.hidden, logits.weight, labels)
            return super().compute_language_model_loss(labels, logits)

    return LinearCrossEntropyGPTModel
