"""The run's data: megatron.core's blended GPT datasets built from the mixture plan.

``BlendedMegatronDatasetBuilder`` does the work (document split, shuffling, blending by weight, index
caching). The kit adds three things: the blend comes from the mixture plan of the folder; a held-out
split per source (the same ``split`` string for training and validation, so held-out documents are
never trained on) that is evaluated per domain; and a sampler that is a pure function of the number
of samples consumed, so a resumed run reads exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from experiment.mixture.outputs import split_string


@dataclass(frozen=True)
class Blend:
    """What the datasets are built from: Megatron prefixes with weights, and which domain each belongs to."""

    prefixes: list[str]
    weights: list[float]
    domains: dict[str, list[str]]
    eod_id: int
    vocab_size: int
    plan: Any = field(default=None, compare=False, repr=False)  # the MixturePlan it came from, when it did

    def __post_init__(self) -> None:
        if not self.prefixes or len(self.prefixes) != len(self.weights):
            raise ValueError("a blend needs one weight per prefix and at least one prefix")
        for prefix in self.prefixes:
            for ext in (".bin", ".idx"):
                if not Path(prefix + ext).is_file():
                    raise FileNotFoundError(
                        f"{prefix}{ext}: shard missing; fix: tokenize the data (`experiment data tokenize`) "
                        "or correct the signature's root"
                    )


@dataclass(frozen=True)
class _TokenIds:
    """The two token ids megatron's GPTDataset needs (it also hashes this into its cache key)."""

    vocab_size: int
    eod: int
    unique_identifiers: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.unique_identifiers.update(vocab_size=self.vocab_size, eod=self.eod)


def blend_from_folder(folder) -> Blend:
    """The blend of a training folder: the mixture plan's prefixes and weights (``experiment.mixture``)."""
    from experiment.data import signature as sig
    from experiment.mixture.plan import plan_folder

    plan = plan_folder(folder)
    prefixes, weights = plan.megatron_blend()
    tokenizers = {sig.read_signature(p).tokenizer.model_dump_json() for p in folder.signature_paths}
    if len(tokenizers) != 1:
        raise ValueError(f"{folder.path}: the signatures use {len(tokenizers)} different tokenizers; use one")
    tok = sig.read_signature(folder.signature_paths[0]).tokenizer
    return Blend([str(p) for p in prefixes], [float(w) for w in weights],
                 {d: [str(p) for p in ps] for d, ps in plan.sources().items()}, tok.eod_id, tok.vocab_size, plan)




def _config(blend: tuple[list[str], list[float] | None], ids: _TokenIds, seq_length: int, seed: int,
            valid_fraction: float, cache: Path):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        split=split_string(valid_fraction),
        path_to_cache=str(cache),
        tokenizer=ids,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=True,
        mid_level_dataset_surplus=0.005,
    )


def _build(config, sizes: list[int | None]):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()


def build_train(blend: Blend, *, num_samples: int, seq_length: int, seed: int, valid_fraction: float,
                cache: Path):
    """The blended training dataset with at least ``num_samples`` samples (built on every rank; rank 0
    writes the index cache first, the others read it)."""
    ids = _TokenIds(blend.vocab_size, blend.eod_id)
    config = _config((blend.prefixes, blend.weights), ids, seq_length, seed, valid_fraction, cache)
    train, _, _ = _build(config, [num_samples, 0, 0])
    return train


def build_valid_per_domain(blend: Blend, *, num_samples: int, seq_length: int, seed: int,
                           valid_fraction: float, cache: Path) -> dict[str, Any]:
    """One validation dataset per domain, from the held-out split of that domain's sources.

    Domains whose sources are too small to hold out a document are left out (and reported by the
    runner), rather than silently evaluated on training data.
    """
    if valid_fraction <= 0 or num_samples <= 0:
        return {}
    ids = _TokenIds(blend.vocab_size, blend.eod_id)
    weight_of = dict(zip(blend.prefixes, blend.weights))
    out = {}
    for domain, prefixes in sorted(blend.domains.items()):
        prefixes = [p for p in prefixes if weight_of.get(p, 0) > 0] or prefixes
        weights = [max(weight_of.get(p, 0.0), 1e-12) for p in prefixes] if len(prefixes) > 1 else None
        config = _config((prefixes, weights), ids, seq_length, seed, valid_fraction, cache)
        try:
            _, valid, _ = _build(config, [0, num_samples, 0])
        except (AssertionError, ValueError, IndexError):
            valid = None  # the held-out split of these sources is empty
        if valid is not None and len(valid) > 0:
            out[domain] = valid
    return out


@dataclass(frozen=True)
class BatchPlan:
    """Which samples this rank reads: global batch ``g`` is samples [g*gbs, (g+1)*gbs) of the dataset, cut
    into contiguous slices per data-parallel rank and then into micro-batches."""

    global_batch_size: int
    micro_batch_size: int
    dp_rank: int
    dp_size: int

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)

    def indices(self, consumed_samples: int) -> list[list[int]]:
        per_rank = self.global_batch_size // self.dp_size
        start = consumed_samples + self.dp_rank * per_rank
        mbs = self.micro_batch_size
        return [list(range(start + m * mbs, start + (m + 1) * mbs)) for m in range(self.num_microbatches)]


def collate(dataset, indices: list[int]) -> dict[str, Any]:
    """Stack the samples megatron's GPTDataset returns into one micro-batch."""
    import torch

    samples = [dataset[i % len(dataset)] for i in indices]
    return {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in samples[0]}


def microbatches(dataset, plan: BatchPlan, consumed_samples: int) -> Iterator[dict[str, Any]]:
    """The micro-batches of the global batch that starts at ``consumed_samples``, for this rank."""
    for idx in plan.indices(consumed_samples):
        yield collate(dataset, idx)
