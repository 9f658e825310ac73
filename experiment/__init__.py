"""midtrain-kit: one training folder describes a continual-pretraining run; the kit runs and reproduces it."""

from experiment import megatron_jit as _megatron_jit

__version__ = "0.1.0"

_megatron_jit.install()  # no torch.compile decorations in megatron.core without a GPU (see the module)
