"""Importing megatron.core through the kit: no torch.compile decorators without a GPU, no wandb for megatron's own hooks."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import sys, torch; from experiment import megatron_import; megatron_import.install()
import megatron.core
from megatron.core.models.gpt import GPTModel
import megatron.core.jit as jit
print(torch.cuda.is_available(), jit.jit_fuser is jit.noop_decorator, "torch._dynamo" in sys.modules)
"""


def test_megatron_imports_without_dynamo_on_cpu():
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _PROBE], capture_output=True, text=True,
                         check=True, timeout=300)
    cuda, noop, dynamo = out.stdout.split()
    if cuda == "True":
        pytest.skip("a GPU is present: megatron keeps torch.compile")
    assert (noop, dynamo) == ("True", "False"), out.stdout + out.stderr


def test_without_the_kit_megatron_would_decorate_with_torch_compile():
    """`import experiment` alone installs no hook (no import side effect), and the hook is what makes the
    difference (guards against a megatron release changing jit_fuser)."""
    probe = _PROBE.replace("from experiment import megatron_import; megatron_import.install()", "import experiment")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", probe], capture_output=True, text=True,
                         check=True, timeout=300)
    cuda, noop, dynamo = out.stdout.split()
    assert (noop, dynamo) == ("False", "True"), out.stdout + out.stderr


_SKIPPED = """
import sys; from experiment import megatron_import; megatron_import.install()
import megatron.core, megatron.core.timers
from megatron.core.inference.contexts import dynamic_context
print(megatron.core.timers.wandb is None, dynamic_context.HAVE_WANDB, "wandb" in sys.modules,
      megatron.core.timers.SummaryWriter is None, "torch.utils.tensorboard" in sys.modules)
import wandb
from torch.utils.tensorboard import SummaryWriter
print(hasattr(wandb, "init"), SummaryWriter.__name__)
"""


def test_megatron_imports_without_wandb_and_the_tracker_still_gets_it():
    """megatron's own W&B and TensorBoard hooks see neither; the kit's tracker and metrics writer (and
    anyone else) still import them."""
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _SKIPPED], capture_output=True, text=True,
                         check=True, timeout=300)
    first, later = out.stdout.splitlines()[-2:]
    assert first.split() == ["True", "False", "False", "True", "False"], out.stdout + out.stderr
    assert later.split() == ["True", "SummaryWriter"], out.stdout + out.stderr
