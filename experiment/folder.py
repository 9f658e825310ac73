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

import json
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from experiment.errors import KitError
from experiment.launcher_names import LAUNCHER_NAMES
from experiment.model.layout import ParallelLayout, layout_mismatches
from experiment.model.presets import PRESETS, ModelShape

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


class FolderError(KitError):
    """Raised by ``load`` with every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
        if len(problems) == 1:  # the CLI handler prints file, field and fix from these
            self.file, self.field, self.fix = problems[0].file, problems[0].field, problems[0].fix

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    """Which tokenized data the run reads and how it is mixed (semantics: ``experiment.mixture``)."""

    signatures: list[str] = Field(min_length=1, description="data signature JSON files, relative to the folder")
    data_ratio: str = Field(default="data_ratio.json", description="multipliers per domain, or per language and domain (docs/mixture.md); relative to the folder")
    lang_prob: str | None = Field(default=None, description="JSON file of each language's share of the budget, summing to 1 (ratio mode)")
    exclude_iterator: str | None = Field(default=None, description="JSON list of shard names to leave out")
    token_budget: str | None = Field(default=None, description="total tokens the mixture is planned for, e.g. '50B', or 'scaled' (sum of tokens x multiplier); default: what training.train_iters or train_tokens gives")
    target_proportions: dict[str, float] | None = Field(
        default=None, description="per-domain share of the budget, summing to 1 (proportion mode, OLMo 2 Dolmino style); data_ratio.json must then be {}"
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
    """A named preset (``experiment.model.presets``) with optional per-field overrides."""

    preset: str = Field(default="tiny", description="model shape by name: " + ", ".join(sorted(PRESETS)))
    seq_length: int = Field(default=256, gt=0, description="tokens per training sample")
    overrides: dict[str, Any] = Field(default_factory=dict, description="per-field changes to the preset's shape, e.g. {num_layers = 2}")

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
    """How the model is trained: parallel layout, batch, length, optimizer and schedule, intervals."""

    tensor_parallel: int = Field(default=1, ge=1, description="tensor-parallel size (divides heads, KV groups, FFN)")
    pipeline_parallel: int = Field(default=1, ge=1, description="pipeline-parallel size (divides the layers)")
    micro_batch_size: int | Literal["auto"] = Field(
        default=1, description="samples per forward/backward on one rank; \"auto\": on a GPU, each micro-batch "
        "that fits the memory estimate and divides the per-rank batch is timed over a few forward/backward passes and "
        "the fastest "
        "kept (run_status.json and run.lock.json record the number, which `experiment reproduce` passes again); "
        "on a CPU 1")
    global_batch_size: int = Field(default=8, ge=1, description="samples per optimizer step, over all data-parallel ranks")
    train_iters: int | None = Field(default=None, ge=1, description="optimizer steps to train (or train_tokens)")
    train_tokens: str | None = Field(default=None, description="alternative to train_iters, e.g. '50B'")
    lr: float = Field(default=3e-4, gt=0, description="peak learning rate")
    min_lr: float = Field(default=3e-5, ge=0, description="learning rate at the end of the decay")
    lr_warmup_iters: int = Field(default=0, ge=0, description="linear warm-up steps")
    lr_decay_style: Literal["constant", "linear", "cosine", "WSD"] = Field(default="cosine", description="learning-rate decay after warm-up (megatron.core's OptimizerParamScheduler)")
    lr_wsd_decay_iters: int | None = Field(default=None, ge=0, description="WSD only: steps of the final decay")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW weight decay")
    adam_beta1: float = Field(default=0.9, description="AdamW beta1")
    adam_beta2: float = Field(default=0.95, description="AdamW beta2")
    clip_grad: float = Field(default=1.0, ge=0, description="gradient-norm clipping (0: off)")
    precision: Literal["fp32", "bf16"] = Field(default="bf16", description="parameter and compute precision (bf16 needs a GPU; CPU runs use fp32)")
    seed: int = Field(default=1234, description="seed of weights init, data order and dropout")
    save_interval: int = Field(default=1000, ge=1, description="steps between checkpoints (the last step is always saved)")
    eval_interval: int = Field(default=1000, ge=1, description="steps between held-out evaluations")
    eval_iters: int = Field(default=10, ge=0, description="batches per evaluation (0: no evaluation)")
    log_interval: int = Field(default=1, ge=1, description="steps between console log lines")
    deterministic: bool = Field(default=False, description="bitwise repeatable runs: export Megatron's deterministic-mode environment (docs/reproducibility.md)")
    attention: Literal["sdpa", "local"] = Field(
        default="sdpa", description="core attention without Transformer Engine: torch SDPA kernels or "
        "megatron's local unfused DotProductAttention (same weights, same math)")
    fp8: bool = Field(default=False, description="FP8 matmuls in the decoder layers' linears: through Transformer "
                      "Engine (hybrid E4M3/E5M2, delayed scaling) where transformer_engine imports, else the kit's "
                      "own FP8 linear (torch._scaled_mm, dynamic per-tensor scales, E4M3 forward, E5M2 gradients; "
                      "the output layer stays bf16); needs precision = \"bf16\" and a GPU with FP8 (compute "
                      "capability 8.9 or later: L4/L40S, H100/H200, B200), refused elsewhere")
    fusions: list[Literal["rmsnorm", "rope", "cross-entropy", "linear-cross-entropy"]] = Field(
        default_factory=list, description="fused or compiled kernels without Transformer Engine or Apex, GPU only: "
        "rmsnorm (torch.compile'd RMSNorm), rope (torch.compile'd rotary embedding), cross-entropy (megatron's "
        "native fused vocab-parallel cross-entropy), linear-cross-entropy (the output layer and the loss in one "
        "pass chunked over tokens: the logits are never held whole; tensor_parallel = 1 only); off by default "
        "until bench/gpu/check.py part 2 measures them")
    recompute: Literal["auto", "none", "selective", "full"] = Field(
        default="auto", description="activation recompute; auto: chosen per preset and GPU memory "
        "(experiment.train.gpu.choose)")
    peak_tflops: float | None = Field(default=None, gt=0, description="the GPU's dense bf16 peak for MFU, "
                                      "where the kit's table does not know the GPU")
    hang_factor: float = Field(
        default=20.0, ge=0, description="hang watchdog: when no step finished for this many times the median step "
        "time (counted as at least 3 s; saves and evaluations excluded), every live rank writes its Python stacks "
        "to logs/hang/, the rank whose heartbeat stopped is named, and the run exits non-zero so the job chain "
        "resumes from the last checkpoint; 0: off")

    @field_validator("micro_batch_size", mode="before")
    @classmethod
    def _micro_batch(cls, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        if isinstance(value, str) and value.strip().isdigit() and int(value) >= 1:
            return int(value)  # `--set training.micro_batch_size=8` arrives as a string
        raise ValueError(f"micro_batch_size must be a whole number >= 1 or \"auto\", not {value!r}")

    @model_validator(mode="after")
    def _length(self) -> "TrainingSection":
        if (self.train_iters is None) == (self.train_tokens is None):
            raise ValueError("set exactly one of train_iters or train_tokens")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is larger than lr ({self.lr})")
        if "linear-cross-entropy" in self.fusions and self.tensor_parallel != 1:
            raise ValueError("fusions linear-cross-entropy needs tensor_parallel = 1 (the vocabulary is not split)")
        if self.fp8 and self.precision != "bf16":
            raise ValueError("fp8 = true needs precision = \"bf16\" (FP8 matmuls keep bf16 weights and outputs)")
        return self


class CheckpointSection(_Section):
    """Where the run starts from and where it saves."""

    base: str | None = Field(default=None, description="Megatron checkpoint folder to continue from (`experiment ckpt import` makes one)")
    from_scratch: bool = Field(default=False, description="train from random weights; required when there is no base")
    save: str = Field(default="checkpoints", description="folder for the run's checkpoints, relative to the folder")
    keep_last: int | None = Field(default=None, ge=1, description="keep only the newest N complete "
                                  "checkpoints (older ones are deleted after a newer one is complete); unset: keep all")
    keep_every: int | None = Field(default=None, ge=1, description="with keep_last: also keep every "
                                   "checkpoint whose iteration is a multiple of this")

    @model_validator(mode="after")
    def _base_or_scratch(self) -> "CheckpointSection":
        if self.base is None and not self.from_scratch:
            raise ValueError("no base checkpoint: set checkpoint.base, or from_scratch = true to train from scratch")
        return self


class ImageSection(_Section):
    """The container image a run uses with `experiment run --container` (docs/containers.md)."""

    flavor: Literal["cpu", "gpu"] = Field(default="cpu", description="which of the kit's images")
    ref: str = Field(default="localhost/midtrain-kit:cpu", description="image reference")
    digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$", description="pin: the image's digest, checked before a run")


class LaunchSection(_Section):
    """How `experiment run` starts the job (docs/training.md)."""

    launcher: Literal[LAUNCHER_NAMES] = Field(default="local", description="local torchrun, container (the kit's image on this machine), or a Slurm/PBS chain of jobs")
    nnodes: int = Field(default=1, ge=1, description="nodes")
    nproc_per_node: int = Field(default=1, ge=1, description="processes (GPUs) per node")
    partition: str | None = Field(default=None, description="Slurm partition / PBS queue")
    account: str | None = Field(default=None, description="Slurm account / PBS project")
    walltime: str = Field(default="24:00:00", description="job time limit, HH:MM:SS")
    cpus_per_task: int | None = Field(default=None, ge=1, description="CPUs of the one task per node that "
                                      "runs torchrun and its ranks (default: 2 per rank)")
    gpus_per_node: int | None = Field(default=None, ge=0, description="default: nproc_per_node with the gpu "
                                      "image flavor, else 0")
    exit_margin_seconds: int = Field(default=300, ge=0, description="the runner saves and stops when one more "
                                     "step plus a save would end less than this before the job's time limit")
    signal_seconds: int = Field(default=120, ge=0, description="SIGTERM this long before the limit (last resort)")
    max_segments: int = Field(default=50, ge=1, description="a chain of jobs stops after this many segments")
    container_runtime: Literal["apptainer", "podman"] = Field(
        default="apptainer", description="what runs the image on the nodes of a Slurm/PBS job under --container: "
        "apptainer (image.ref or --image: a .sif file or a URI) or podman (an image in the nodes' podman store)")

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: str) -> str:
        from experiment.duration import parse_duration

        parse_duration(v)
        return v


class TrackingSection(_Section):
    """Experiment trackers that mirror the TensorBoard scalars (rank 0 only; see docs/tracking.md).
    Credentials never go here: MLflow and W&B read them from their own environment variables."""

    mlflow: bool = Field(default=False, description="log to MLflow (default store: a SQLite file in logs/)")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default sqlite:///<folder>/logs/mlflow.db (relative "
        "sqlite paths are relative to the folder)")
    mlflow_experiment: str | None = Field(default=None, description="MLflow experiment name (default: the folder's name)")
    wandb: bool = Field(default=False, description="log to Weights & Biases")
    wandb_mode: Literal["offline", "online"] = Field(
        default="offline", description="offline writes logs/wandb/ to `wandb sync` later from a login node")
    wandb_project: str | None = Field(default=None, description="W&B project (default: the folder's name)")
    wandb_entity: str | None = Field(default=None, description="W&B entity (team or user; default: your default entity)")

    @model_validator(mode="after")
    def _no_credentials(self) -> "TrackingSection":
        from urllib.parse import urlsplit

        uri = self.mlflow_tracking_uri or ""
        parts = urlsplit(uri)
        if parts.password or parts.username or "token=" in parts.query.lower() or "key=" in parts.query.lower():
            raise ValueError("tracking.mlflow_tracking_uri carries credentials; write the URI without them and set "
                             "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN in the "
                             "environment (never in experiment.toml, which the lockfile records)")
        return self


class TrainingFolderConfig(_Section):
    """The content of ``experiment.toml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the run's name (letters, digits, . _ -)")
    description: str = Field(default="", description="free text, for people")
    data: DataSection = Field(description="[data]: the tokenized data and how it is mixed")
    model: ModelSection = Field(default=ModelSection(), description="[model]: the model's shape")
    training: TrainingSection = Field(description="[training]: optimizer, schedule, batch and parallel layout")
    checkpoint: CheckpointSection = Field(description="[checkpoint]: base weights and where to save")
    image: ImageSection = Field(default=ImageSection(), description="[image]: the container image")
    launch: LaunchSection = Field(default=LaunchSection(), description="[launch]: how the job is started")
    tracking: TrackingSection = Field(default=TrackingSection(), description="[tracking]: MLflow / W&B mirrors of the TensorBoard scalars")

    @model_validator(mode="after")
    def _parallel_layout(self) -> "TrainingFolderConfig":
        shape, t = self.model.shape, self.training
        errors = []
        for m in layout_mismatches(shape, ParallelLayout(t.tensor_parallel, t.pipeline_parallel)):
            errors.append(f"training.{m.parallel}={m.size} does not divide the model's {m.field} = {m.value} "
                          f"(use one of {m.divisors})")
        world = self.launch.nnodes * self.launch.nproc_per_node
        model_parallel = t.tensor_parallel * t.pipeline_parallel
        if world % model_parallel:
            errors.append(f"{world} processes are not a multiple of tensor x pipeline parallel = {model_parallel}")
        else:
            mbs = 1 if t.micro_batch_size == "auto" else t.micro_batch_size  # auto picks a divisor
            if t.global_batch_size % (mbs * (world // model_parallel)):
                errors.append(
                    f"training.global_batch_size={t.global_batch_size} is not a multiple of micro_batch_size x "
                    f"data-parallel size = {mbs * (world // model_parallel)}"
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
    overrides: tuple[str, ...] = ()  # `--set section.key=value` applied over experiment.toml, in order

    def resolve(self, relative: str) -> Path:
        return (self.path / relative).resolve()

    @property
    def signature_paths(self) -> list[Path]:
        return [self.resolve(s) for s in self.config.data.signatures]

    def read_json(self, relative: str) -> Any:
        return json.loads(self.resolve(relative).read_text())


# A semantic check: owned by a higher layer (the mixture's is ``experiment.mixture.checks.mixture_problems``),
# run after the schema passes, returning every problem it finds. Callers pass them in; this module
# imports nothing above itself.
SemanticCheck = Callable[["TrainingFolder"], list[Problem]]

_FIXES = {
    "missing": "add the field",
    "extra_forbidden": "remove it or correct its spelling (every field: docs/experiment-toml.md)",
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


def _schema_problems(config_file: Path, err: ValidationError, overrides=()) -> list[Problem]:
    """One problem per schema error; an error in a field a ``--set`` gave names the ``--set``."""
    given = {o.partition("=")[0].strip(): o for o in overrides}
    problems = []
    for e in err.errors():
        fix = _FIXES.get(e["type"], "see the field's description in docs/experiment-toml.md")
        name = _field_name(e["loc"])
        origin = next((o for k, o in given.items() if name == k or name.startswith(k + ".")), None)
        if origin is None and e["type"] != "extra_forbidden":  # a model validator: the section it checks
            origin = next((o for k, o in given.items() if name == k.rsplit(".", 1)[0]), None)
        if origin is not None:
            problems.append(Problem(f"--set {origin}", name, e["msg"],
                                    fix.replace("remove it", "drop the --set") + " (--set overrides "
                                    f"{config_file.name}'s fields: section.key=value)"))
        else:
            problems.append(Problem(str(config_file), name, e["msg"], fix))
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


def _override_value(text: str) -> Any:
    """A ``--set`` value read as a TOML value (``1e-4``, ``true``, ``[1, 2]``, ``"x"``); anything TOML does
    not read (``2B``, ``cosine``) is a string, so the config model decides what is valid."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: tuple[str, ...] | list[str]) -> tuple[dict, list[Problem]]:
    """``experiment.toml``'s content with each ``section.key=value`` set (dotted keys reach nested tables,
    e.g. ``model.overrides.num_layers=4``). The result is validated by the same models as the file."""
    import copy

    out, problems = copy.deepcopy(raw), []
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            problems.append(Problem(f"--set {item}", key or item, "not of the form section.key=value",
                                    "write it as e.g. --set training.lr=1e-4"))
            continue
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(Problem(f"--set {item}", ".".join(parts[:i + 1]), "is a value, not a table",
                                        "set the value itself, e.g. --set " + ".".join(parts[:i + 1]) + "=..."))
                break
        else:
            node[parts[-1]] = _override_value(value.strip())
    return out, problems


def check_schema(path: str | Path, overrides: tuple[str, ...] | list[str] = (),
                 semantic: Sequence[SemanticCheck] = ()) -> tuple[TrainingFolder | None, list[Problem]]:
    """Validate a training folder (with ``--set`` overrides applied); returns the folder (None if the
    schema failed) and all problems.

    ``semantic`` checks run once the schema holds and the signatures exist; the full validation of the
    kit is ``experiment.mixture.checks.check_all``, which passes the mixture's."""
    path = Path(path)
    raw, problems = _read_config(path)
    if raw is None:
        return None, problems
    raw, problems = apply_overrides(raw, overrides)
    if problems:
        return None, problems
    try:
        config = TrainingFolderConfig.model_validate(raw)
    except ValidationError as err:
        return None, _schema_problems(path / CONFIG_NAME, err, overrides)
    folder = TrainingFolder(path.resolve(), config, tuple(overrides))
    problems = _json_problems(folder)
    if not errors(problems) and all(f.is_file() for f in folder.signature_paths):
        for semantic_check in semantic:
            problems.extend(semantic_check(folder))
    return folder, problems


def errors(problems: list[Problem]) -> list[Problem]:
    """The problems that make a folder invalid (not just not ready)."""
    return [p for p in problems if not p.missing_artifact]


def load_schema(path: str | Path, *, require_artifacts: bool = True, overrides: tuple[str, ...] | list[str] = (),
                semantic: Sequence[SemanticCheck] = ()) -> TrainingFolder:
    """The folder checked against the schema and its files (plus the ``semantic`` checks a caller passes),
    or ``FolderError`` listing every problem. The full check a run needs (the mixture too) is
    ``experiment.mixture.checks.load_checked``.

    ``require_artifacts=True`` (what a run needs) also refuses a folder whose base checkpoint or shards
    are not present; ``False`` accepts a well-formed recipe whose artifacts live elsewhere.
    """
    folder, problems = check_schema(path, overrides, semantic)
    blocking = problems if require_artifacts else errors(problems)
    if blocking or folder is None:
        raise FolderError(blocking or problems)
    return folder
