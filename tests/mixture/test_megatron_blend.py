"""The planned weights, given to megatron.core's own BlendedMegatronDatasetBuilder (on CPU) over real shards
written with IndexedDatasetBuilder: 100,000 drawn samples carry each domain's tokens within 1% of its weight."""

from __future__ import annotations

import random
from pathlib import Path

import numpy
import pytest

from experiment.mixture.checks import load_checked
from experiment.mixture.plan import plan_folder
from tests.mixture.helpers import folder, name, signature, write_shard

SEQ = 16
SAMPLES = 100_000
DOMAIN_ID = {"books": 1, "code": 2, "news": 3, "web": 4, "math": 5}


def _write(tmp_path: Path) -> Path:
    """Shards whose token ids say their domain (id // 1000), documents of uneven length."""
    rng = random.Random(0)
    layout = [("en", "books", 3), ("en", "code", 2), ("en", "math", 2), ("ar", "news", 2), ("ar", "web", 3)]
    shards, sizes, i = [], {}, 0
    for lang, domain, count in layout:
        for _ in range(count):
            docs = [[DOMAIN_ID[domain] * 1000 + rng.randrange(1000) for _ in range(rng.randint(5, 300))]
                    for _ in range(rng.randint(20, 60))]
            tokens = sum(map(len, docs))
            n = name(lang, domain, i, tokens)
            sizes[n] = write_shard(tmp_path / "shards" / n, docs)
            shards.append((n, tokens))
            i += 1
    ratio = {"en": {"books": 1, "code": 3, "math": 2}, "ar": {"news": 1, "web": 0.5}}
    exclude = [shards[0][0]]  # one books shard left out: its mass stays within en
    return folder(tmp_path, shards, ratio, lang_prob={"en": 0.65, "ar": 0.35}, exclude=exclude,
                  sig=signature(shards, sizes=sizes), seq_length=SEQ,
                  training=f"train_iters = {SAMPLES // 8}\nglobal_batch_size = 8")


def _build(prefixes, weights, cache: Path):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

    config = GPTDatasetConfig(
        random_seed=1234, sequence_length=SEQ, blend=(prefixes, weights), split="1,0,0",
        path_to_cache=str(cache), tokenizer=NullTokenizer(8000), reset_position_ids=False,
        reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [SAMPLES, 0, 0], lambda: True, config).build()
    return train


@pytest.fixture
def process_group(tmp_path):
    """Megatron's BlendedDataset asks torch.distributed for the rank when it caches: one real gloo process."""
    import torch.distributed as dist

    if dist.is_initialized():  # an earlier in-process test's single-rank group serves as well
        yield
        return
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.slow
def test_megatron_draws_the_planned_token_fractions(tmp_path, process_group):
    plan = plan_folder(load_checked(_write(tmp_path)))
    prefixes, weights = plan.megatron_blend()
    train = _build(prefixes, weights, tmp_path / "cache")
    assert len(train) >= SAMPLES

    for i in range(0, SAMPLES, 97):  # the full sample path, on a spread of indices
        assert train[i]["tokens"].shape == (SEQ,)
    # all 100k samples through BlendedDataset's own two indices and GPTDataset's own sample lookup (what
    # __getitem__ does, minus building masks); the tokens (not the labels' extra one) are counted
    drawn_tokens = numpy.empty((SAMPLES, SEQ), dtype=numpy.int64)
    for i in range(SAMPLES):
        shard, sample = train.dataset_index[i], train.dataset_sample_index[i]
        text, _ = train.datasets[shard]._query_document_sample_shuffle_indices(sample)
        drawn_tokens[i] = text[:SEQ]
    counts = numpy.bincount((drawn_tokens // 1000).ravel(), minlength=max(DOMAIN_ID.values()) + 1)
    drawn = counts / counts.sum()
    target = {d: sum(e.weight for e in plan.entries if e.domain == d) for d in DOMAIN_ID}
    for domain, wanted in target.items():
        got = drawn[DOMAIN_ID[domain]]
        print(f"{domain:6s} planned {wanted:.5f} drawn {got:.5f} ({100 * (got - wanted) / wanted:+.3f}%)")
        assert abs(got - wanted) <= 0.01 * wanted, f"{domain}: drew {got:.5f} of the tokens, planned {wanted:.5f}"
    assert counts[0] == 0  # every token came from a planned shard
    # the excluded shard's mass stayed in its language: en keeps exactly 0.65 of the tokens (within 1%)
    en = sum(drawn[DOMAIN_ID[d]] for d in ("books", "code", "math"))
    assert en == pytest.approx(0.65, rel=0.01)

    # the blended index is cached: a second build reads it back and gives the same samples
    again = _build(prefixes, weights, tmp_path / "cache")
    assert numpy.array_equal(again.dataset_index, train.dataset_index)
    assert numpy.array_equal(again[123]["tokens"].numpy(), train[123]["tokens"].numpy())
