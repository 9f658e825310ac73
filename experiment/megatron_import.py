"""Importing megatron.core without what the kit never uses from it.

Every torchrun rank, checkpoint conversion and test imports megatron.core. Two parts of that import do
nothing for the kit, and ``install()`` skips them:

- **torch.compile decorators without a GPU.** megatron wraps its fusion kernels with
  ``megatron.core.jit.jit_fuser`` at import time, which imports ``torch._dynamo`` and ``torch._inductor``
  (2.5-3 s on the 2-core CI host). The kit turns the fusions off on CPU (``experiment.model.build``), so
  when ``megatron.core.jit`` is loaded on a host with no usable CUDA device we call megatron's own
  ``disable_jit_fuser()``: each later decoration is the identity. With a GPU nothing changes.
- **megatron's own W&B and TensorBoard hooks.** ``megatron.core.timers`` and the dynamic inference
  context ``import wandb`` when it is installed (it is: the kit logs W&B itself,
  ``experiment.train.trackers``), which costs 0.2-0.4 s; ``megatron.core.timers`` also imports
  ``torch.utils.tensorboard`` (0.28 s: tensorboard's protobufs). megatron only writes to either through
  a writer that the kit never passes it, so for importers inside ``megatron`` both are reported absent
  (each import sits in megatron's own ``try/except ImportError``); anyone else, the kit's own metrics
  writer included, imports them normally.
Importing ``experiment`` changes nothing: a process opts in by calling ``install()`` (the CLI's root
callback, each torchrun worker, ``experiment.model`` before building). The finder then costs one name
comparison per import of the process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_JIT = "megatron.core.jit"
_NOT_FOR_MEGATRON = ("wandb", "torch.utils.tensorboard")


def _no_gpu() -> bool:
    import torch  # already imported: megatron.core imports torch before its jit module

    return not torch.cuda.is_available()


def _importer() -> str:
    """The module whose ``import`` statement is being run (the first frame outside importlib)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("importlib", "_frozen_importlib")) and name != __name__:
            return name
        frame = frame.f_back
    return ""


class _MegatronFinder(importlib.abc.MetaPathFinder):
    """Finds megatron.core.jit like the normal path finder would, with the changes described in the
    module docstring; every other name is left to the next finder."""

    def __init__(self) -> None:
        self.pending = {_JIT}

    def find_spec(self, name, path, target=None):
        if name in _NOT_FOR_MEGATRON and _importer().startswith("megatron."):
            raise ModuleNotFoundError(f"No module named {name!r} (not for megatron: experiment.megatron_import)", name=name)
        if name not in self.pending:
            return None
        self.pending.discard(name)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            if _no_gpu():
                module.disable_jit_fuser()

        spec.loader.exec_module = exec_module  # this spec's own loader instance only
        return spec


_FINDER = _MegatronFinder()


def install() -> None:
    """Hook megatron.core's first import (nothing to do when it is already imported)."""
    if _JIT not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
