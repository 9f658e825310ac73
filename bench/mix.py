"""Bench: planning a 100,000-shard mixture, and building Megatron's blended index for 10,000 shards.

1. plan: the kit (read the data signature, plan, every check but the file stats) next to the anchor, a
   faithful re-statement of seed 002's ``data_ratio_from_file.py`` (tests/mixture/seed002_reference.py),
   on the same names, ratios, language probabilities and excludes; time (best of N) and peak Python memory
   (tracemalloc, a separate run so it does not slow the timing).
2. index: megatron.core's BlendedMegatronDatasetBuilder over 10,000 real shards (IndexedDatasetBuilder) with
   the kit's blend: the first build writes the index cache (``path_to_cache``), the second reads it; the anchor
   is the same build without a cache (what every rank and every restart pays otherwise).

    python bench/mix.py                  # 100,000 shards to plan, 10,000 for the index
    python bench/mix.py --plan-shards 20000 --index-shards 1000 --repeats 3
"""

from __future__ import annotations

import sys  # noqa: I001  -- first: `python bench/mix.py` puts bench/ on sys.path, where a sibling script

sys.path[:] = [p for p in sys.path if not p.endswith("/bench")]  # (bench/tokenize.py) shadows the stdlib module

import argparse
import gc
import io
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.mixture.helpers import folder, name, signature, write_shard  # noqa: E402
from tests.mixture.seed002_reference import seed002_weights  # noqa: E402

LANGS = {"en": ["books", "code", "reasoning", "scientific", "web", "math", "wiki", "news"],
         "ar": ["books", "encyclopedias", "news", "others", "transcribed", "web"],
         "fr": ["web", "books", "news"], "de": ["web", "books"]}
console = Console(width=130)


def make_inputs(root: Path, n: int, seed: int = 0) -> tuple[Path, dict]:
    """A training folder over n shards (signature for the kit, a name list for the seed script)."""
    rng = random.Random(seed)
    combos = [(lang, dom) for lang, doms in LANGS.items() for dom in doms]
    shards = []
    for i in range(n):
        lang, dom = combos[i % len(combos)]
        tokens = rng.randint(50_000, 5_000_000)
        shards.append((name(lang, dom, i, tokens), tokens))
    ratio = {lang: {d: rng.choice([1, 1.5, 2, 3]) for d in doms} for lang, doms in LANGS.items()}
    prob = {"en": 0.5, "ar": 0.3, "fr": 0.15, "de": 0.05}
    excluded = [s + ".bin" for s, _ in rng.sample(shards, n // 100)]
    path = folder(root, shards, ratio, lang_prob=prob, exclude={"exclude_iterator_name": excluded},
                  data_extra='token_budget = "100T"', seq_length=1024)
    (root / "names.json").write_text(json.dumps([s + ".bin" for s, _ in shards]))
    return path, {"names": root / "names.json", "ratio": root / "data_ratio.json", "prob": root / "lang_prob.json",
                  "exclude": root / "exclude_iterator.json"}


def run_anchor(files: dict) -> list:
    names = json.loads(files["names"].read_text())
    ratio = json.loads(files["ratio"].read_text())
    prob = json.loads(files["prob"].read_text())
    exclude = json.loads(files["exclude"].read_text())["exclude_iterator_name"]
    return seed002_weights(names, ratio, prob, exclude, 10**14, io.StringIO())


def run_kit(path: Path):
    import tomllib

    from experiment.folder import TrainingFolder, TrainingFolderConfig
    from experiment.mixture.checks import check_plan, signature_problems

    cfg = TrainingFolderConfig.model_validate(tomllib.loads((path / "experiment.toml").read_text()))
    tf = TrainingFolder(path.resolve(), cfg)
    shards, problems = signature_problems(tf)
    result, more = check_plan(tf, shards)
    if result is not None:
        result.megatron_blend()  # what Megatron is handed
    return result, problems + more


def timed_pair(a, b, repeats: int) -> tuple[list[float], object, list[float], object]:
    """Time a and b alternately, so load from other processes on the machine hits both alike."""
    ta, tb, out_a, out_b = [], [], None, None
    for _ in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            gc.collect()
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
            if fn is a:
                out_a = out
            else:
                out_b = out
    return ta, out_a, tb, out_b


def peak_mb(fn) -> float:
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def bench_plan(n: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, files = make_inputs(Path(tmp), n)
        run_kit(path)  # imports (pydantic models, orjson) happen once per process, outside the timing
        t_anchor, ref, t_kit, (result, problems) = timed_pair(lambda: run_anchor(files), lambda: run_kit(path),
                                                              repeats)
        m_anchor, m_kit = peak_mb(lambda: run_anchor(files)), peak_mb(lambda: run_kit(path))
    # same inputs, same answer: every weight equal to the seed script's, bit for bit
    kit_w = {e.name: e.weight for e in result.entries} if result is not None else {}
    same = bool(kit_w) and all(kit_w.get(nm) == p for p, nm, _ in ref) and len(kit_w) == len(ref)
    table = Table(title=f"plan a mixture of {n:,} shards (checks included, file stats excluded); best of {repeats}")
    for col in ("", "seed 002 script (anchor)", "kit", "kit / anchor"):
        table.add_column(col, justify="right")
    table.add_row("time best (s)", f"{min(t_anchor):.3f}", f"{min(t_kit):.3f}", f"{min(t_kit) / min(t_anchor):.3f}")
    table.add_row("time median (s)", f"{statistics.median(t_anchor):.3f}", f"{statistics.median(t_kit):.3f}",
                  f"{statistics.median(t_kit) / statistics.median(t_anchor):.3f}")
    table.add_row("peak Python memory (MB)", f"{m_anchor:.1f}", f"{m_kit:.1f}", f"{m_kit / m_anchor:.2f}")
    table.add_row("shards kept", f"{len(ref):,}", f"{len(kit_w):,}", "")
    console.print(table)
    console.print(f"weights identical to the anchor's, bit for bit: {same}")
    console.print("problems the kit reports on these inputs (the seed script reports none):")
    for p in problems:
        console.print(f"  - {p.field}: {p.message}")


def _build(prefixes, weights, cache: Path | None, samples: int, seq: int, mmap: bool):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

    config = GPTDatasetConfig(
        random_seed=1234, sequence_length=seq, blend=(prefixes, weights), split="1,0,0",
        path_to_cache=str(cache) if cache else None, tokenizer=NullTokenizer(32000), reset_position_ids=False,
        reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False, mmap_bin_files=mmap,
    )
    return BlendedMegatronDatasetBuilder(GPTDataset, [samples, 0, 0], lambda: True, config).build()[0]


def bench_index(n: int, samples: int, seq: int) -> None:
    import numpy
    from tqdm import tqdm

    from experiment.mixture.checks import check_all

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = numpy.random.default_rng(0)
        combos = [(lang, dom) for lang, doms in LANGS.items() for dom in doms]
        shards, sizes = [], {}
        for i in tqdm(range(n), desc="writing shards", unit="shard"):
            lang, dom = combos[i % len(combos)]
            docs = [rng.integers(0, 32000, size=int(rng.integers(20, 200))) for _ in range(8)]
            tokens = int(sum(len(d) for d in docs))
            nm = name(lang, dom, i, tokens)
            sizes[nm] = write_shard(root / "shards" / nm, docs)
            shards.append((nm, tokens))
        ratio = {lang: {d: 1 for d in doms} for lang, doms in LANGS.items()}
        path = folder(root, shards, ratio, lang_prob={"en": 0.5, "ar": 0.3, "fr": 0.15, "de": 0.05},
                      sig=signature(shards, sizes=sizes), seq_length=seq,
                      training=f"train_iters = {samples // 8}\nglobal_batch_size = 8")
        t = time.perf_counter()
        loaded, problems = check_all(path)  # schema + every mixture check, the file stats included
        t_check = time.perf_counter() - t
        # each build in its own process, as a restart would be (Megatron keeps every shard's files open, so
        # builds in one process would also run out of file descriptors)
        runs = [("no path_to_cache, 1st run (GPT indices written beside the shards)", ""),
                ("no path_to_cache, 2nd run (blend index rebuilt)", ""),
                ("path_to_cache, first build (writes the cache)", str(root / "cache")),
                ("path_to_cache, cached build", str(root / "cache"))]
        results = []
        for label, cache in runs:
            t = time.perf_counter()
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--build-one", str(path), cache,
                                  str(samples)], capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode or not line:
                why = [ln for ln in out.stderr.splitlines() if "Error" in ln and "__del__" not in ln
                       and "has no attribute" not in ln]
                results.append((label, {"failed": (why or ["?"])[-1][:150], "wall": time.perf_counter() - t}))
            else:
                results.append((label, json.loads(line[-1])))
    ok = [r for _, r in results if "seconds" in r]
    anchor = results[1][1].get("seconds") or (ok[0]["seconds"] if ok else 1.0)
    table = Table(title=f"Megatron blended index over {n:,} real shards, {samples:,} samples of {seq} tokens")
    for col in ("build (fresh process each)", "seconds", "vs no path_to_cache 2nd run", "open files after"):
        table.add_column(col, justify="right")
    for label, r in results:
        if "seconds" in r:
            table.add_row(label, f"{r['seconds']:.2f}", f"{r['seconds'] / anchor:.3f}", f"{r['open_files']:,}")
        else:
            table.add_row(label, f"failed after {r['wall']:.0f} s", r["failed"], "")
    table.add_row(f"kit checks incl. {2 * n:,} file stats", f"{t_check:.2f}", "", "")
    console.print(table)
    same = len({r["index"] for r in ok}) == 1
    console.print(f"the builds that ran give the same blended index: {same}; .bin files memory-mapped: "
                  f"{ok[0]['mmap'] if ok else '?'} (ulimit -n {ok[0]['ulimit'] if ok else '?'})")
    console.print(f"kit check problems: {[p.message for p in problems]}")


def build_one(folder_path: str, cache: str, samples: int) -> None:
    """Child process: build the folder's blend with Megatron, print seconds and a hash of the index."""
    import hashlib
    import logging
    import resource

    import torch.distributed as dist

    from experiment.mixture.checks import check_all
    from experiment.mixture.plan import plan_folder

    logging.getLogger("megatron").setLevel(logging.WARNING)
    loaded, _ = check_all(folder_path)
    plan = plan_folder(loaded)
    prefixes, weights = plan.megatron_blend()
    seq = loaded.config.model.seq_length
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    mmap = 6 * len(prefixes) + 256 <= soft  # open files per shard: .idx, .bin x2 (mmap), 3 cached indices
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=0, world_size=1)
        try:
            _build(prefixes[:2], weights[:2], Path(tmp) / "warm", 100, seq, mmap)  # imports, untimed
            t = time.perf_counter()
            built = _build(prefixes, weights, Path(cache) if cache else None, samples, seq, mmap)
            seconds = time.perf_counter() - t
            index = hashlib.sha256(built.dataset_index.tobytes() + built.dataset_sample_index.tobytes()).hexdigest()
            open_files = len(os.listdir("/proc/self/fd"))
        finally:
            dist.destroy_process_group()
    print(json.dumps({"seconds": seconds, "index": index, "mmap": mmap, "ulimit": soft, "open_files": open_files}),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan-shards", type=int, default=100_000)
    ap.add_argument("--index-shards", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--seq-length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--skip-plan", action="store_true")
    ap.add_argument("--build-one", nargs=3, metavar=("FOLDER", "CACHE", "SAMPLES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_one:
        build_one(args.build_one[0], args.build_one[1], int(args.build_one[2]))
        return
    if not args.skip_plan:
        bench_plan(args.plan_shards, args.repeats)
    if not args.skip_index:
        bench_index(args.index_shards, args.samples, args.seq_length)


if __name__ == "__main__":
    main()
