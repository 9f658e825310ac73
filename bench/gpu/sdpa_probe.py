"""Which SDPA kernels run the 1B attention shape (GQA 32/8, seq 2048, bf16) on this GPU, and whether the
backward runs under torch.use_deterministic_algorithms: a 20-second probe before bench/gpu/check.sh."""
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory/2**30)
torch.use_deterministic_algorithms(True)
q = torch.randn(4, 32, 2048, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(4, 8, 2048, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
v = torch.randn_like(k, requires_grad=True)
for det in (True,):
    try:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        o.sum().backward()
        print("deterministic sdpa gqa backward ok", q.grad.abs().sum().item())
    except Exception as e:
        print("deterministic sdpa gqa FAILED:", type(e).__name__, str(e)[:300])
torch.use_deterministic_algorithms(False)

for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
    try:
        with sdpa_kernel(be):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            o.sum().backward()
        torch.cuda.synchronize()
        t = time.time()
        with sdpa_kernel(be):
            for _ in range(5):
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                o.sum().backward()
        torch.cuda.synchronize()
        print(be, "ok", (time.time() - t) / 5 * 1e3, "ms")
    except Exception as e:
        print(be, "FAILED", str(e)[:200])
