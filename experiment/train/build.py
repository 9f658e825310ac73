"""The parts the runner builds one rank's run from: GPU choice, vocabulary, seeds, run folders, datasets.

``runner.Trainer.build`` keeps the wiring (process group, model, DDP, optimizer, scheduler, in that order, so
what is imported and set before the determinism environment stays as it was); what each step decides lives
here, as functions of the folder and the process group, so the runner reads as set up, loop, finish.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from experiment.train.console import say


@dataclass(frozen=True)
class DeviceSetup:
    """This rank's device: the spec/recompute choice (None on CPU) and the numbers the MFU and status need."""

    choice: object | None  # gpu.Choice
    device_name: str | None
    flops_per_token: float
    peak: float | None
    layer_spec: str  # recorded in run_status.json, and from there in the lock
    extra: dict  # TransformerConfig extras: recompute, FP8, fusions
    micro_batch_size: int = 1  # the folder's, or auto's pick (replaced once measured: runner._pick_micro_batch)
    fp8: str | None = None  # "te-delayed" | "local-tensorwise" | None: recorded in run_status.json and the lock
    fusions: tuple[str, ...] = ()  # training.fusions in force (none on CPU)
    micro_batch_timings: dict | None = None  # "auto": seconds per global batch of each candidate (autobatch.pick)


def seed_host_rngs(seed: int) -> None:
    """Python's and numpy's global generators (torch's are seeded by ``distributed.initialize``): they are
    part of the saved RNG state, so they must start from the seed for runs to be byte-identical."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)


def prepare_folders(log_dir: Path, save_dir: Path, det_env: dict) -> None:
    """The logs folder with the determinism environment in force; stale ``*.partial`` checkpoints removed (rank 0)."""
    from experiment.train import checkpointing as ckpt

    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "determinism.json").write_text(json.dumps(det_env, indent=1, sort_keys=True) + "\n")
    removed = ckpt.remove_stale_partials(save_dir) if save_dir.is_dir() else []
    for p in removed:
        say(f"removed {p.name}, a checkpoint a killed run did not finish")


def gpu_choice(t, shape, seq: int, world: int):
    """The spec/recompute choice on a GPU (None on CPU, where the local spec runs as before)."""
    import torch

    from experiment.train import gpu

    if t.fp8:
        from experiment.model.fp8 import fp8_problem

        on_gpu = torch.cuda.is_available()
        problem = fp8_problem(torch.cuda.get_device_capability() if on_gpu else None,
                              torch.cuda.get_device_name() if on_gpu else None)
        if problem:
            from experiment.folder import FolderError, Problem

            raise FolderError([Problem(file="experiment.toml", field="training.fp8", message=problem,
                                       fix="set fp8 = false (bf16), or run on an FP8 GPU (H100, H200, L40S, B200)")])
    if not torch.cuda.is_available():
        return None
    mem = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    dp = max(1, world // (t.tensor_parallel * t.pipeline_parallel))
    return gpu.choose(shape, seq, mem, te_available=gpu.te_available(), fp8=t.fp8, attention=t.attention,
                      recompute=t.recompute, micro_batch_size=t.micro_batch_size,
                      global_batch_size=t.global_batch_size, tp=t.tensor_parallel, pp=t.pipeline_parallel, dp=dp,
                      fusions=tuple(t.fusions))


def device_setup(t, shape, seq: int, env) -> DeviceSetup:
    """Layer spec and TransformerConfig extras (recompute, FP8) for this GPU; FLOPs per token and peak for MFU."""
    import torch

    from experiment.train import gpu, throughput

    choice = gpu_choice(t, shape, seq, env.world_size)
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    flops_per_token = throughput.flops_per_token(shape, seq)
    peak = throughput.peak_flops(device_name, t.peak_tflops)
    auto = t.micro_batch_size == "auto"
    mbs = (choice.micro_batch_size if choice is not None else 1) if auto else t.micro_batch_size
    if env.rank == 0 and choice is not None:
        c = choice
        say(f"{device_name}: spec {c.spec}, recompute {c.recompute}, micro-batch {t.micro_batch_size} "
            f"(suggested {c.micro_batch_size}: {c.reason}, ~{c.estimated_gib:.0f} GiB)"
            + (f"; auto: timing {', '.join(map(str, c.candidates))}" if auto and len(c.candidates) > 1 else ""))
    if env.rank == 0 and choice is None:
        if auto:
            say("micro_batch_size = \"auto\" on CPU: 1 (the micro-batch is measured on a GPU only)")
        if t.fusions:
            say(f"training.fusions {list(t.fusions)}: GPU only, not applied on CPU")
    if choice is None:
        spec = "local" if t.attention == "local" else "local-sdpa"
        return DeviceSetup(None, device_name, flops_per_token, peak, spec, {}, mbs)
    fusions = tuple(t.fusions)
    if "rope" in fusions:
        from experiment.model import fused

        fused.install_compiled_rope()
    fp8 = None if not t.fp8 else ("te-delayed" if choice.spec == "te-fp8" else "local-tensorwise")
    return DeviceSetup(choice, device_name, flops_per_token, peak, choice.spec, gpu.config_extra(choice, fusions),
                       mbs, fp8, fusions)


def model_vocab(folder, shape, layout) -> tuple[int, Path | None]:
    """Padded vocabulary and base folder; the base's recorded shape must be the folder's."""
    from experiment.ckpt import meta as ckpt_meta
    from experiment.model.build import padded_vocab_size

    ck = folder.config.checkpoint
    if ck.from_scratch or ck.base is None:
        return padded_vocab_size(shape.vocab_size, layout.tensor_parallel), None
    base = folder.resolve(ck.base)
    meta = ckpt_meta.read_meta(base)
    diff = meta.shape.differences(shape)
    if diff:
        raise ValueError(
            f"{base}/kit_checkpoint.json: the base checkpoint's shape differs from the folder's model "
            f"(base, folder): {diff}; fix: set [model] preset/overrides to the base's shape"
        )
    if meta.padded_vocab_size % layout.tensor_parallel:
        raise ValueError(f"{base}: padded vocabulary {meta.padded_vocab_size} does not split over "
                         f"tensor_parallel={layout.tensor_parallel}")
    return meta.padded_vocab_size, base


def domain_counter(dataset, blend):
    """A function (start, count) -> {domain: samples} from the blended dataset's own index."""
    import numpy as np

    index = getattr(dataset, "dataset_index", None)
    if index is None or not hasattr(dataset, "datasets"):
        domain = next((d for d, ps in blend.domains.items() if blend.prefixes[0] in ps), "all")
        return lambda start, count: {domain: count}
    domain_of = []
    for ds in dataset.datasets:
        path = getattr(ds, "dataset_path", None)
        domain_of.append(next((d for d, ps in blend.domains.items() if path in ps), "other"))

    def count(start: int, n: int) -> dict[str, int]:
        ids = np.asarray(index[start:start + n])
        out: dict[str, int] = {}
        for i, c in zip(*np.unique(ids, return_counts=True)):
            out[domain_of[int(i)]] = out.get(domain_of[int(i)], 0) + int(c)
        return out

    return count


def build_data(folder, iters: int, seq: int, *, log_dir: Path, resuming: bool, rank: int, evaluate: bool):
    """(training set, validation set per domain, batch plan, domain counter); the mixture checked on a resume.

    A resume must read the blended index it started with: every rank checks, then rank 0 records the mixture
    this run reads from now on (atomically, so a rank still checking reads the old or the new record).
    """
    from megatron.core import parallel_state as ps

    from experiment.mixture import record as mixture_record
    from experiment.train import data as train_data

    cfg, t = folder.config, folder.config.training
    blend = train_data.blend_from_folder(folder)
    changes = mixture_record.check_resume(log_dir, blend.plan, cfg.data.allow_mixture_change) if resuming else []
    for change in changes:
        say(f"WARNING: mixture changed on resume (data.allow_mixture_change = true): {change}")
    if rank == 0:
        mixture_record.write_record(log_dir, blend.plan)
    cache = log_dir / "dataset_index"  # megatron's index cache: derived data, kept with the run's outputs
    evaluate = evaluate and t.eval_iters
    train_ds = train_data.build_train(blend, num_samples=iters * t.global_batch_size, seq_length=seq, seed=t.seed,
                                      valid_fraction=cfg.data.valid_fraction, cache=cache)
    valid_sets = (train_data.build_valid_per_domain(
        blend, num_samples=t.eval_iters * t.global_batch_size, seq_length=seq, seed=t.seed,
        valid_fraction=cfg.data.valid_fraction, cache=cache) if evaluate else {})
    if evaluate:
        missing = sorted(set(blend.domains) - set(valid_sets))
        if missing:
            say(f"WARNING: no held-out documents for {missing}: raise data.valid_fraction to evaluate them")
    plan = train_data.BatchPlan(t.global_batch_size, t.micro_batch_size,
                                ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())
    return train_ds, valid_sets, plan, domain_counter(train_ds, blend)
