"""Model FLOPs per token, GPU peaks, MFU and ETA: the numbers the runner's log line, TensorBoard,
``run_status.json`` and the summary report, so every run says how well it uses its GPUs and when it ends.

FLOPs are counted as Megatron-LM counts them (``num_floating_point_operations``, causal attention): forward +
backward = 3 x forward, each matmul 2 x m x n x k, attention scores and values 2 x 2 x (seq / 2) x hidden per
token and layer (a causal mask computes half the score matrix), the output layer included, norms and activations
left out. With this count the issue's anchor (46.7k tokens/s of the 1B at seq 2048) is the 365 TFLOP/s it quotes.
"""

from __future__ import annotations

# Dense bf16 tensor-core peaks (datasheet, no sparsity), FLOP/s per GPU. Matched by substring of
# torch.cuda.get_device_name(); a folder overrides with [training] peak_tflops.
PEAK_BF16: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe part is 756
    "H800": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
}


def flops_per_token(shape, seq_length: int) -> float:
    """Training FLOPs (forward + backward) per token of a Llama-family decoder at ``seq_length``."""
    h, layers = shape.hidden_size, shape.num_layers
    kv = shape.num_query_groups * shape.kv_channels
    attn_proj = h * (h + 2 * kv) + h * h  # q, k, v and output projections
    mlp = 3 * h * shape.ffn_hidden_size  # gate, up, down (SwiGLU)
    attn_scores = seq_length * h  # q k^T and scores x v over the causal half, per token (x 2 below)
    forward = 2 * (layers * (attn_proj + mlp + attn_scores) + h * shape.vocab_size)
    return 3.0 * forward


def peak_flops(device_name: str | None, override_tflops: float | None = None) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s: the folder's override, else the table; None when unknown (CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    if not device_name:
        return None
    for key in sorted(PEAK_BF16, key=len, reverse=True):  # "GH200" before "H200"
        if key in device_name:
            return PEAK_BF16[key]
    return None


def mfu(tokens_per_s_per_gpu: float, flops_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s per GPU over the GPU's peak."""
    return None if not peak else tokens_per_s_per_gpu * flops_token / peak


def eta_seconds(step_seconds: list[float], done: int, total: int, window: int = 20) -> float | None:
    """Seconds to ``total`` iterations from the mean of the last ``window`` steps (the first step of a
    process, with its warm-up, is left out once there are others)."""
    recent = step_seconds[1:] if len(step_seconds) > 1 else step_seconds
    recent = recent[-window:]
    if not recent:
        return None
    return max(0, total - done) * sum(recent) / len(recent)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d" if d else "") + (f"{h:02d}:{m:02d}:{s:02d}" if d or h else f"{m:02d}:{s:02d}")
