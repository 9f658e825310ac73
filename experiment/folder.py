"""TrainingFolder: the validated schema of a training folder, and `check`, which reports every problem at once.

A training folder is the whole, declarative description of one run::

    training/<name>/
      experiment.toml          model, training, checkpoint, image and launch settings (this schema)
      data_ratio.json          {domain: multiplier} or {lang: {domain: multiplier}}
      lang_prob.json           {lang: probability}                       (optional)
      exclude_iterator.json    [shard prefix or name, ...]               (optional)
      README.md                what the run is for                       (optional)

and points at one or more data signatures (``data_signatures/*.json``) and a base checkpoint.
Paths inside ``experiment.toml`` are relative to the folder. Loading never half-succeeds: either a
``TrainingFolder`` comes back or a list of ``Problem`` (file, field, message, fix) does.
"""

from __future__ import annotations

import importlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from experiment.presets import PRESETS, ModelShape

CONFIG_NAME = "experiment.toml"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a training folder, phrased so a user can fix it without reading code."""

    file: str
    field: str
    message: str
    fix: str
    # True when the folder itself is well-formed but an artifact it points at (base checkpoint weights,
    # tokenized shards) is not on this machine yet: `experiment check` warns, `experiment run` refuses.
    missing_artifact: bool = False

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        kind = "not present yet" if self.missing_artifact else "error"
        return f"{where}: [{kind}] {self.message} -- fix: {self.fix}"


class FolderError(Exception):
    """Raised by ``load`` with every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    """Which tokenized data the run reads and how it is mixed (semantics: ``experiment.mixture``)."""

    signatures: list[str] = Field(min_length=1, description="data signature JSON files, relative to the folder")
    data_ratio: str = "data_ratio.json"
    lang_prob: str | None = None
    exclude_iterator: str | None = None
    token_budget: str | None = Field(default=None, description="total tokens to train on, e.g. '50B'")
    target_proportions: dict[str, float] | None = Field(
        default=None, description="per-source share of the budget (OLMo 2 Dolmino style)"
    )
    max_epochs: float | None = Field(default=None, gt=0, description="cap on repetitions of any source")
    valid_fraction: float = Field(default=0.0002, ge=0, lt=0.5, description="held-out share per source")
    optional_domains: list[str] = Field(
        default_factory=list,
        description="domains, languages or 'lang.domain' keys allowed to be missing from the data or the ratios",
    )
    normalize_lang_prob: bool = Field(
        default=False, description="divide lang_prob.json by its sum (seed 002 did so silently) instead of refusing"
    )
    allow_mixture_change: bool = Field(
        default=False, description="let a resumed run continue with a mixture other than the one it started with"
    )


class ModelSection(_Section):
    """A named preset (``experiment.presets``) with optional per-field overrides."""

    preset: str = "tiny"
    seq_length: int = Field(default=256, gt=0)
    overrides: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_preset(self) -> "ModelSection":
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")
        self.shape  # validates the overrides
        return self

    @property
    def shape(self) -> ModelShape:
        return ModelShape(**{**PRESETS[self.preset].model_dump(), **self.overrides})


class TrainingSection(_Section):
    tensor_parallel: int = Field(default=1, ge=1)
    pipeline_parallel: int = Field(default=1, ge=1)
    micro_batch_size: int = Field(default=1, ge=1)
    global_batch_size: int = Field(default=8, ge=1)
    train_iters: int | None = Field(default=None, ge=1)
    train_tokens: str | None = Field(default=None, description="alternative to train_iters, e.g. '50B'")
    lr: float = Field(default=3e-4, gt=0)
    min_lr: float = Field(default=3e-5, ge=0)
    lr_warmup_iters: int = Field(default=0, ge=0)
    lr_decay_style: Literal["constant", "linear", "cosine", "WSD"] = "cosine"
    lr_wsd_decay_iters: int | None = Field(default=None, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = Field(default=1.0, ge=0)
    precision: Literal["fp32", "bf16"] = "bf16"
    seed: int = 1234
    save_interval: int = Field(default=1000, ge=1)
    eval_interval: int = Field(default=1000, ge=1)
    eval_iters: int = Field(default=10, ge=0)
    log_interval: int = Field(default=1, ge=1)
    deterministic: bool = False
    attention: Literal["sdpa", "local"] = Field(
        default="sdpa", description="core attention without Transformer Engine: torch SDPA kernels or "
        "megatron's local unfused DotProductAttention (same weights, same math)")
    fp8: bool = Field(default=False, description="FP8 (hybrid E4M3/E5M2, delayed scaling) through Transformer "
                      "Engine; refused where transformer_engine does not import")
    recompute: Literal["auto", "none", "selective", "full"] = Field(
        default="auto", description="activation recompute; auto: chosen per preset and GPU memory "
        "(experiment.train.gpu.choose)")
    peak_tflops: float | None = Field(default=None, gt=0, description="the GPU's dense bf16 peak for MFU, "
                                      "where the kit's table does not know the GPU")

    @model_validator(mode="after")
    def _length(self) -> "TrainingSection":
        if (self.train_iters is None) == (self.train_tokens is None):
            raise ValueError("set exactly one of train_iters or train_tokens")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is larger than lr ({self.lr})")
        return self


class CheckpointSection(_Section):
    base: str | None = Field(default=None, description="Megatron checkpoint folder to continue from")
    from_scratch: bool = False
    save: str = "checkpoints"

    @model_validator(mode="after")
    def _base_or_scratch(self) -> "CheckpointSection":
        if self.base is None and not self.from_scratch:
            raise ValueError("no base checkpoint: set checkpoint.base, or from_scratch = true to train from scratch")
        return self


class ImageSection(_Section):
    flavor: Literal["cpu", "gpu"] = "cpu"
    ref: str = "localhost/midtrain-kit:cpu"
    digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")


class LaunchSection(_Section):
    launcher: Literal["local", "slurm", "pbs"] = "local"
    nnodes: int = Field(default=1, ge=1)
    nproc_per_node: int = Field(default=1, ge=1)
    partition: str | None = None
    account: str | None = None
    walltime: str = "24:00:00"


class TrainingFolderConfig(_Section):
    """The content of ``experiment.toml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    data: DataSection
    model: ModelSection = ModelSection()
    training: TrainingSection
    checkpoint: CheckpointSection
    image: ImageSection = ImageSection()
    launch: LaunchSection = LaunchSection()

    @model_validator(mode="after")
    def _parallel_layout(self) -> "TrainingFolderConfig":
        shape, t = self.model.shape, self.training
        errors = []
        if shape.num_attention_heads % t.tensor_parallel or shape.num_query_groups % t.tensor_parallel:
            errors.append(
                f"training.tensor_parallel={t.tensor_parallel} does not divide the {shape.num_attention_heads} "
                f"attention heads and {shape.num_query_groups} KV groups"
            )
        if shape.num_layers % t.pipeline_parallel:
            errors.append(
                f"training.pipeline_parallel={t.pipeline_parallel} does not divide the {shape.num_layers} layers"
            )
        world = self.launch.nnodes * self.launch.nproc_per_node
        model_parallel = t.tensor_parallel * t.pipeline_parallel
        if world % model_parallel:
            errors.append(f"{world} processes are not a multiple of tensor x pipeline parallel = {model_parallel}")
        elif t.global_batch_size % (t.micro_batch_size * (world // model_parallel)):
            errors.append(
                f"training.global_batch_size={t.global_batch_size} is not a multiple of micro_batch_size x "
                f"data-parallel size = {t.micro_batch_size * (world // model_parallel)}"
            )
        if self.model.seq_length > shape.max_position_embeddings:
            errors.append(f"model.seq_length exceeds the preset's {shape.max_position_embeddings} positions")
        if errors:
            raise ValueError("; ".join(errors))
        return self


@dataclass(frozen=True)
class TrainingFolder:
    """A loaded, validated training folder: its path and parsed config, with path helpers."""

    path: Path
    config: TrainingFolderConfig

    def resolve(self, relative: str) -> Path:
        return (self.path / relative).resolve()

    @property
    def signature_paths(self) -> list[Path]:
        return [self.resolve(s) for s in self.config.data.signatures]

    def read_json(self, relative: str) -> Any:
        return json.loads(self.resolve(relative).read_text())


# Semantic checks owned by other modules, run after the schema passes. Each entry is
# "module:function", taking a TrainingFolder and returning list[Problem]. Explicit, no magic.
SEMANTIC_CHECKS: tuple[str, ...] = ("experiment.mixture.checks:check_folder",)

_FIXES = {
    "missing": "add the field",
    "extra_forbidden": "remove it or correct its spelling (see experiment/folder.py for the schema)",
}


def _field_name(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if part not in ("function-after",)) or "(top level)"


def _read_config(path: Path) -> tuple[dict | None, list[Problem]]:
    config_file = path / CONFIG_NAME
    if not path.is_dir():
        return None, [Problem(str(path), "", "is not a folder", "give the path of a training folder (training/<name>)")]
    if not config_file.is_file():
        return None, [Problem(str(config_file), "", "missing", f"create {CONFIG_NAME}; copy training/demo/{CONFIG_NAME}")]
    try:
        return tomllib.loads(config_file.read_text()), []
    except tomllib.TOMLDecodeError as err:
        return None, [Problem(str(config_file), "", f"not valid TOML: {err}", "correct the syntax at that line")]


def _schema_problems(config_file: Path, err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors():
        fix = _FIXES.get(e["type"], "see the field's description in experiment/folder.py")
        problems.append(Problem(str(config_file), _field_name(e["loc"]), e["msg"], fix))
    return problems


def _json_problems(folder: TrainingFolder) -> list[Problem]:
    """Every file the config points at exists and parses; the base checkpoint is a Megatron checkpoint."""
    cfg, problems = folder.config, []
    named = [("data.data_ratio", cfg.data.data_ratio), ("data.lang_prob", cfg.data.lang_prob),
             ("data.exclude_iterator", cfg.data.exclude_iterator)]
    named += [(f"data.signatures[{i}]", s) for i, s in enumerate(cfg.data.signatures)]
    for field, rel in named:
        if rel is None:
            continue
        target = folder.resolve(rel)
        if not target.is_file():
            if field.startswith("data.signatures"):
                problems.append(Problem(
                    str(folder.path / CONFIG_NAME), field, f"{target} does not exist",
                    "tokenize the data and run `experiment data signature`, or correct the path",
                    missing_artifact=True,
                ))
            else:
                problems.append(Problem(str(folder.path / CONFIG_NAME), field, f"{target} does not exist",
                                        "create the file or correct the path (relative to the folder)"))
            continue
        try:
            json.loads(target.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            problems.append(Problem(str(target), "", f"not valid JSON: {err}", "correct the syntax at that line"))
    base = cfg.checkpoint.base
    if base is not None and not cfg.checkpoint.from_scratch:
        target = folder.resolve(base)
        if not (target / "latest_checkpointed_iteration.txt").is_file():
            problems.append(Problem(
                str(folder.path / CONFIG_NAME), "checkpoint.base",
                f"{target} holds no Megatron checkpoint (no latest_checkpointed_iteration.txt)",
                "run `experiment ckpt import HF_DIR <base>` first, or correct the path",
                missing_artifact=True,
            ))
    return problems


def check(path: str | Path) -> tuple[TrainingFolder | None, list[Problem]]:
    """Validate a training folder; returns the folder (None if the schema failed) and all problems."""
    path = Path(path)
    raw, problems = _read_config(path)
    if raw is None:
        return None, problems
    try:
        config = TrainingFolderConfig.model_validate(raw)
    except ValidationError as err:
        return None, _schema_problems(path / CONFIG_NAME, err)
    folder = TrainingFolder(path.resolve(), config)
    problems = _json_problems(folder)
    if not errors(problems) and all(f.is_file() for f in folder.signature_paths):
        for entry in SEMANTIC_CHECKS:
            module_name, func_name = entry.split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                if err.name != module_name:
                    raise
                continue  # the owning feature is not part of this build yet
            problems.extend(getattr(module, func_name)(folder))
    return folder, problems


def errors(problems: list[Problem]) -> list[Problem]:
    """The problems that make a folder invalid (not just not ready)."""
    return [p for p in problems if not p.missing_artifact]


def load(path: str | Path, *, require_artifacts: bool = True) -> TrainingFolder:
    """The validated folder, or ``FolderError`` listing every problem.

    ``require_artifacts=True`` (what a run needs) also refuses a folder whose base checkpoint or shards
    are not present; ``False`` accepts a well-formed recipe whose artifacts live elsewhere.
    """
    folder, problems = check(path)
    blocking = problems if require_artifacts else errors(problems)
    if blocking or folder is None:
        raise FolderError(blocking or problems)
    return folder
