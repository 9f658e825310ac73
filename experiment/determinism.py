"""The environment for bitwise repeatable runs, applied before any CUDA or NCCL work.

Megatron documents what a deterministic run needs (``--deterministic-mode``): NCCL must not pick
non-deterministic reduction algorithms, Transformer Engine must not use its non-deterministic
kernels, cuBLAS needs a fixed workspace, and torch must refuse non-deterministic ops. The variables
are read when CUDA/NCCL/TE initialise, so ``apply`` runs first thing in the runner process (and the
launchers export the same values in job scripts). What was applied is returned so it can be recorded.
"""

from __future__ import annotations

import os

# Megatron-LM's deterministic-mode recipe (docs: "Reproducibility" / --deterministic-mode).
DETERMINISTIC_ENV: dict[str, str] = {
    "NCCL_ALGO": "Ring",  # tree/NVLS reductions change the summation order between runs
    "NVTE_ALLOW_NONDETERMINISTIC_ALGO": "0",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "PYTHONHASHSEED": "0",
}


def environment(deterministic: bool) -> dict[str, str]:
    """The variables a run with this setting exports (empty when not deterministic)."""
    return dict(DETERMINISTIC_ENV) if deterministic else {}


def apply(deterministic: bool) -> dict[str, str]:
    """Export the environment and switch torch to deterministic algorithms; returns what was set.

    Must run before the first CUDA call and before the process group is created. Values already in
    the environment win (a cluster may need another NCCL_ALGO), and the returned dict says which
    values are actually in force.
    """
    import torch

    if not deterministic:
        return {}
    applied = {}
    for key, value in DETERMINISTIC_ENV.items():
        os.environ.setdefault(key, value)
        applied[key] = os.environ[key]
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    applied["torch.use_deterministic_algorithms"] = "True"
    return applied
