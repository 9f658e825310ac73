"""The kit's FP8 linear on this GPU, before any training row: the CUDA ``torch._scaled_mm`` result asserted
against the fp32 emulation of the same quantized operands (forward) and against the bf16 matmul (forward and
both gradients), then forward + backward timed against bf16 on the 1B's MLP shape.

    python bench/gpu/fp8_probe.py OUT.json        (bench/gpu/check.py --part 1 runs it as row p8)

Exits 1 when a result is off (the JSON says which), so a broken kernel is a failed row, not a silent number.
Without CUDA (the dry run) the same checks run on small shapes with torch's CPU ``_scaled_mm``, untimed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def timed(fn, n: int = 20) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n if n else 0.0


def main(out: Path) -> int:
    import torch

    from experiment import megatron_import

    megatron_import.install()
    from experiment.model import fp8

    torch.manual_seed(0)
    gpu = torch.cuda.is_available()
    dev, m, k, n = ("cuda", 8 * 2048, 2048, 16384) if gpu else ("cpu", 256, 128, 512)  # mbs 8 x seq 2048; 1B fc1
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
    g = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    y = fp8.fp8_linear(x, w)
    y.backward(g)
    dx, dw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    ref = torch.nn.functional.linear(x, w)
    ref.backward(g)
    checks = {"forward_vs_emulated": (rel(y, fp8.emulated_linear(x.detach(), w.detach())), 0.01),
              "forward_vs_bf16": (rel(y, ref), 0.06), "dgrad_vs_bf16": (rel(dx, x.grad), 0.1),
              "wgrad_vs_bf16": (rel(dw, w.grad), 0.1)}

    def step(f):
        return lambda: f(x, w).backward(g)

    t_bf16, t_fp8 = (timed(step(torch.nn.functional.linear)), timed(step(fp8.fp8_linear))) if gpu else (None, None)
    result = {"device": torch.cuda.get_device_name() if gpu else "CPU (untimed)", "shape": f"x [{m}, {k}] @ w [{n}, {k}]^T",
              "checks": {k: {"rel_error": round(v, 5), "limit": lim, "ok": v < lim} for k, (v, lim) in checks.items()},
              "bf16_fwd_bwd_ms": t_bf16 and round(t_bf16 * 1e3, 3), "fp8_fwd_bwd_ms": t_fp8 and round(t_fp8 * 1e3, 3),
              "fp8_speedup": t_fp8 and round(t_bf16 / t_fp8, 3)}
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0 if all(c["ok"] for c in result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
