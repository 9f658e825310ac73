"""The sections of ``run.lock.json`` as typed records, shared by the writer (``lockfile``) and the readers
(``verify``, ``reproduce``), so a field is named once and a misspelt one fails loudly.

A lock is canonical JSON (see ``lockfile.dumps``): the records only give it a shape. A record keeps the
keys it was built or read with (``dump`` leaves out fields that were never set), so a version-1 lock
written before these records existed reads, verifies and re-serialises byte for byte.

Adding a section: one model here and one field on ``RunLock`` (default ``None`` so that older locks
still read), then its writer in ``lockfile.build_run_lock`` and its check in ``verify.verify``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    """A lock section: unknown keys are an error (a typo, or a lock from a newer kit)."""

    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict[str, Any]:
        """The JSON-ready dict, with exactly the keys this record was made with."""
        return self.model_dump(mode="json", exclude_unset=True)


class KitRecord(Record):
    """The kit's code: version, hash of its source files, and the git state (or the image's record of it)."""

    version: str
    source_hash: str
    commit: str | None = None
    dirty: bool | None = None
    dirty_diff_hash: str | None = None


class ImageRecord(Record):
    """The container image a run used."""

    ref: str
    digest: str | None = None
    flavor: str | None = None
    env_hash: str | None = None


class EnvironmentRecord(Record):
    """The software the numbers depend on: image (or host), runtime versions, every installed distribution."""

    containerized: bool
    image: ImageRecord | None = None
    python: str
    machine: str | None = None
    torch: str | None = None
    cuda: str | None = None
    cudnn: str | None = None
    nccl: str | None = None
    transformer_engine: str | None = None
    megatron_core: str | None = None
    gpu: list[str] | None = None
    distributions: dict[str, str] = Field(default_factory=dict)
    distributions_hash: str


class FolderRecord(Record):
    """The training folder's description: each file's hash, and the parsed content of its small JSON/TOML."""

    files: dict[str, str]
    content: dict[str, Any] = Field(default_factory=dict)


class SignatureRecord(Record):
    """One data signature the folder reads."""

    name: str
    file_hash: str
    canonical_hash: str
    hash_algorithm: str
    shards: int


class FileRecord(Record):
    """A file by size and content hash."""

    bytes: int
    hash: str


class ShardRecord(Record):
    """One Megatron shard (.bin + .idx) as found on disk when the run was locked."""

    language: str
    domain: str
    subdomain: str | None = None
    tokens: int
    docs: int
    algorithm: str
    bin: FileRecord
    idx: FileRecord


class BlendRecord(Record):
    """The blend exactly as given to Megatron: [shard key, weight] in order."""

    available: bool = True
    reason: str | None = None
    entries: list[tuple[str, float]] = Field(default_factory=list)


class DataRecord(Record):
    shards: dict[str, ShardRecord]
    signature_disagreements: list[str] = Field(default_factory=list)
    blend: BlendRecord


class BaseCheckpointRecord(Record):
    """The base weights a run started from: folder (relative), combined hash, each file's hash."""

    path: str
    hash: str
    files: dict[str, str]


class ConfigRecord(Record):
    """The resolved configuration. ``experiment`` stays a plain dict: its schema is the folder's
    (``experiment.folder``), which may grow, and an old lock must still read."""

    experiment: dict[str, Any]
    model_shape: dict[str, Any]
    resolved: dict[str, Any] = Field(default_factory=dict)
    overrides: list[str] = Field(default_factory=list)  # `experiment run --set` (absent from older locks)


class LaunchRecord(Record):
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    world_size: int
    micro_batch_size: int
    global_batch_size: int
    seed: int
    launcher: dict[str, Any] = Field(default_factory=dict)
    layer_spec: str | None = None  # the spec the runner built: te, te-fp8, local-sdpa, local (absent: older locks)
    recompute: str | None = None  # activation recompute the runner used: none, selective, full
    fp8: str | None = None  # the FP8 recipe the runner used: te-delayed, local-tensorwise (None: bf16, older locks)


class CheckpointRecord(Record):
    """One saved iteration: each file's hash and, when read back, each tensor's."""

    files: dict[str, str]
    tensors: dict[str, str] | None = None


class LossesRecord(Record):
    """Per-step [step, loss, grad norm, lr] with floats as the hex strings the runner logged."""

    file: str
    hash: str | None = None
    steps: list[list[int | str | None]] = Field(default_factory=list)


class LogRecord(Record):
    file: str
    hash: str | None = None


class OutputsRecord(Record):
    """What the run produced: losses, checkpoints (files and tensors), eval log."""

    latest_iteration: str | None = None
    checkpoint_files: dict[str, str] = Field(default_factory=dict)
    checkpoints: dict[str, CheckpointRecord] = Field(default_factory=dict)
    losses: LossesRecord
    eval: LogRecord | None = None


class CheckpointRecordSection(Record):
    """Every save of the run (iteration, folder, each file's hash; kept after retention pruned the folder) and
    everything a resume moved aside (damaged checkpoints, cut log lines, a --restart)."""

    saves: list[dict[str, Any]] = Field(default_factory=list)
    aside: list[dict[str, Any]] = Field(default_factory=list)


class RunLock(Record):
    """``run.lock.json``. Sections added after version 1 must default to ``None``."""

    lock_version: int
    name: str
    kit: KitRecord
    environment: EnvironmentRecord
    folder: FolderRecord
    signatures: dict[str, SignatureRecord]
    tokenizer: dict[str, dict[str, Any]]  # the signatures' tokenizer records (their schema: experiment.data)
    data: DataRecord
    base_checkpoint: BaseCheckpointRecord | None = None
    config: ConfigRecord
    determinism: dict[str, str] = Field(default_factory=dict)
    launch: LaunchRecord
    outputs: OutputsRecord
    checkpoint_record: CheckpointRecordSection | None = None
