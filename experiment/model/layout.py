"""How a model is split over processes (tensor and pipeline parallel) and whether a shape allows it.

Free of torch and megatron imports, so validating a folder (``experiment check``) stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from experiment.model.presets import ModelShape


@dataclass(frozen=True)
class ParallelLayout:
    tensor_parallel: int = 1
    pipeline_parallel: int = 1


@dataclass(frozen=True)
class LayoutMismatch:
    """A model dimension that a parallel size does not divide (TP splits heads, KV groups and the FFN;
    PP splits the layers)."""

    field: str  # the ModelShape field
    value: int
    parallel: str  # "tensor_parallel" | "pipeline_parallel"
    size: int

    @property
    def divisors(self) -> list[int]:
        """The sizes that would work (up to 64)."""
        return [d for d in range(1, min(self.value, 64) + 1) if self.value % d == 0]


def layout_mismatches(shape: ModelShape, layout: ParallelLayout) -> list[LayoutMismatch]:
    """Every dimension of ``shape`` that ``layout`` cannot split evenly: the one divisibility check of the
    kit, used by the folder's validation and by checkpoint conversion."""
    found = []
    for name in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
        value = getattr(shape, name)
        if value % layout.tensor_parallel:
            found.append(LayoutMismatch(name, value, "tensor_parallel", layout.tensor_parallel))
    if shape.num_layers % layout.pipeline_parallel:
        found.append(LayoutMismatch("num_layers", shape.num_layers, "pipeline_parallel", layout.pipeline_parallel))
    return found
