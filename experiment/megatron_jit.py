"""Skip megatron.core's ``torch.compile`` decorators on hosts without a GPU.

megatron.core wraps its fusion kernels with ``megatron.core.jit.jit_fuser`` (``torch.compile``) at
import time. Decorating imports ``torch._dynamo`` and ``torch._inductor``: 2.5-3 s of every process that
imports megatron on the 2-core CI host (measured: megatron.core import 4.7 s -> 1.9 s), paid by every
torchrun rank, checkpoint conversion and test, for kernels that never run without a GPU (the kit turns
the fusions off on CPU, ``experiment.model.build``). When ``megatron.core.jit`` is loaded on a host with
no usable CUDA device we call megatron's own ``disable_jit_fuser()``, so each later decoration is the
identity. With a GPU nothing changes.

Importing ``experiment`` changes nothing: a process opts in by calling ``install()`` (the CLI's root
callback, each torchrun worker, ``experiment.model`` before building). It costs one name comparison per
import and removes itself once the module is loaded; with megatron already imported it does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "megatron.core.jit"


def _no_gpu() -> bool:
    import torch  # already imported: megatron.core imports torch before its jit module

    return not torch.cuda.is_available()


class _JitFinder(importlib.abc.MetaPathFinder):
    """Finds ``megatron.core.jit`` like the normal path finder, and disables the fuser right after
    the module has run."""

    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        uninstall()
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


_FINDER = _JitFinder()


def install() -> None:
    """Hook the first import of megatron.core.jit (nothing to do when it is already imported)."""
    if _TARGET not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
