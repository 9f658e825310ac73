"""The prepared GPU check (issues 19 and 31), in parts ranked by priority, each one call of the device tool:

    python bench/gpu/check.py --out OUT --part 1 [--dry-run] [--commit SHA] [--budget-s S] [--only k8,b8]

part 1 (first): like-for-like BF16 rows at 1B, kit and bare megatron.core over the same window (whole steps,
  everything the kit does per step), at micro-batch 8 and 4; FP8 at 1B with its loss over the first 100 steps
  against BF16's.
part 2 (second): 3B (Llama-3.2-3B shapes, micro_batch_size = "auto") BF16 vs FP8; the fusions on and off at 1B;
  deterministic mode at 1B.
part repeat: issue 19's two runs bitwise and kill -9 + resume (135M preset).

Every row is its own process (a clean CUDA context). Each row's raw record (micro-batch, global batch,
sequence, every timed step, its 3 windows) and the machine's (commit, GPU, card, driver, CUDA, torch,
megatron-core) go to OUT/gpu_check_part<N>.json after every row, so a call cut short still brings back what
ran; rows that would start past --budget-s are skipped and say so. ``--dry-run`` does everything up to the first
CUDA call: folders, synthetic shards, the kit's folder validation, the imports, every row's layer spec (the FP8
and compiled-norm specs included) and the table from made-up rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (REPO / "bench", REPO / "bench" / "gpu")]
sys.path.insert(0, str(REPO))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


table = _load("gpu_table")
repeat = _load("repeat")

SEQ = 2048
GBS = 16
ONE_B, THREE_B = "llama3.2-1b", "llama3.2-3b"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    kind: str  # kit | bare | probe (bench/gpu/fp8_probe.py: the FP8 kernel's numbers asserted, then timed)
    preset: str = ONE_B
    mbs: int | str = 8  # a number, "auto", or "from:<key>" (the micro-batch another row used)
    steps: int = 31  # steps run; the first (warm-up) is left out of the windows
    fp8: bool = False
    fusions: tuple[str, ...] = ()
    deterministic: bool = False
    losses: bool = False  # keep the per-step losses (the FP8 loss comparison)
    folder: str = ""  # another row's folder (a bare row runs its kit twin's folder)

    def estimate_s(self) -> float:
        """Seconds of the row's process: start-up (imports, build, data index, compile) + steps. From the
        2026-12-04 H200 rows (1B mbs 4: 34 s for 17 steps of 0.66 s); 3B and FP8 scaled by FLOPs, guessed."""
        fp8 = 0.75 if self.fp8 else 1.0
        per_step = {ONE_B: 0.66 * fp8, THREE_B: 1.7 * fp8}.get(self.preset, 0.5)
        if self.kind == "probe":
            return 20
        start = 50 if self.preset == THREE_B else 25
        return start + 12 * bool(self.fusions) + self.steps * per_step


PARTS = {
    "1": [
        Row("p8", "FP8 linear on this GPU: kernel vs emulation and bf16, timed", "probe"),
        Row("k8", "kit BF16 1B, mbs 8 (100 steps)", "kit", steps=100, losses=True),
        Row("b8", "bare megatron.core BF16 1B, mbs 8", "bare", folder="k8"),
        Row("f8", "kit FP8 (local, tensorwise) 1B, mbs 8 (100 steps)", "kit", steps=100, fp8=True, losses=True),
        Row("k4", "kit BF16 1B, mbs 4", "kit", mbs=4),
        Row("b4", "bare megatron.core BF16 1B, mbs 4", "bare", mbs=4, folder="k4"),
    ],
    "2": [
        Row("k3", "kit BF16 3B, mbs auto", "kit", preset=THREE_B, mbs="auto", steps=16),
        Row("f3", "kit FP8 (local) 3B, mbs as k3", "kit", preset=THREE_B, mbs="from:k3", steps=16, fp8=True),
        Row("n0", "kit BF16 1B, mbs 8, fusions off", "kit", steps=13),
        Row("d8", "kit BF16 1B, mbs 8, deterministic", "kit", steps=13, deterministic=True),
        Row("nl", "linear + cross-entropy fused (chunked)", "kit", steps=13, fusions=("linear-cross-entropy",)),
        Row("nc", "cross-entropy fused", "kit", steps=13, fusions=("cross-entropy",)),
        Row("nr", "RMSNorm compiled", "kit", steps=13, fusions=("rmsnorm",)),
        Row("np", "RoPE compiled", "kit", steps=13, fusions=("rope",)),  # past the budget unless rows run fast:
        Row("na", "all three fusions", "kit", steps=13, fusions=("rmsnorm", "rope", "cross-entropy")),  # --only
    ],
}


def make_folder(path: Path, signature: Path, row: Row, mbs: int | str, seq: int = SEQ, smoke: bool = False) -> Path:
    """The row's training folder (``smoke``: the tiny preset in fp32, for a CPU run of the check's own code)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / "experiment.toml").write_text(repeat.folder_toml(
        path.name, signature, row.preset, seq, mbs=mbs, gbs=GBS, iters=1000, precision="fp32" if smoke else "bf16",
        fp8=row.fp8, fusions=row.fusions, save_interval=100000, log_interval=10, deterministic=row.deterministic))
    (path / "data_ratio.json").write_text(json.dumps({"web": 1.0, "code": 1.0}))
    return path


def _counts(preset: str, seq: int) -> tuple[float, float | None]:
    import torch

    from experiment.model.presets import PRESETS
    from experiment.train.throughput import flops_per_token, peak_flops

    return flops_per_token(PRESETS[preset], seq), peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None


def kit_row(row: Row, folder: Path, log: Path, seq: int) -> dict:
    timeout = 2 * row.estimate_s() + 120
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, "-m", "experiment.train.runner", str(folder), "--max-iterations",
                             str(row.steps), "--no-save"], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                            timeout=timeout).returncode
    if rc:
        raise RuntimeError(f"runner exited {rc}; see logs/{log.name}")
    st = json.loads((folder / "logs" / "run_status.json").read_text())
    flops, peak = _counts(row.preset, seq)
    mbs = st["micro_batch_size"]
    rec = {"micro_batch_size": mbs, "step_seconds": st["recent_step_seconds"], "layer_spec": st["layer_spec"],
           "recompute": st["recompute"], "peak_memory_gib": st["peak_memory_gib"], "fp8": st.get("fp8"),
           "fusions": st.get("fusions"), "micro_batch_timings": st.get("micro_batch_timings"),
           "status_tokens_per_s_per_gpu": st.get("tokens_per_s_per_gpu"), "flops_per_token": flops,
           **table.speed(st["recent_step_seconds"], GBS * seq, flops, peak)}
    if row.losses:
        from experiment.runlog import read_losses

        losses = [float.fromhex(r["loss"]) for r in read_losses(folder / "logs")][:100]
        rec.update(losses=losses, mean_loss=sum(losses) / len(losses))
    return rec


def bare_main(folder: Path, iters: int, out: Path) -> None:
    """A bare row in its own process: bench/train_step.py's bare megatron.core loop on the kit row's folder."""
    import torch

    spec = importlib.util.spec_from_file_location("train_step", REPO / "bench" / "train_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    times = mod.bare_round(folder, iters)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    out.write_text(json.dumps({"step_seconds": times[1:], "peak_memory_gib": round(peak, 3)}))


def bare_row(row: Row, folder: Path, log: Path, work: Path, seq: int) -> dict:
    out = work / f"bare-{row.key}.json"
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, __file__, "--out", str(work), "--bare", str(folder), str(row.steps),
                             str(out)], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                            timeout=2 * row.estimate_s() + 120).returncode
    if rc:
        raise RuntimeError(f"bare loop exited {rc}; see logs/{log.name}")
    raw = json.loads(out.read_text())
    flops, peak = _counts(row.preset, seq)
    return {"micro_batch_size": row.mbs, "step_seconds": raw["step_seconds"], "layer_spec": "local-sdpa",
            "recompute": "none", "peak_memory_gib": raw["peak_memory_gib"], "flops_per_token": flops,
            **table.speed(raw["step_seconds"], GBS * seq, flops, peak)}


def probe_row(log: Path, work: Path) -> dict:
    out = work / "fp8_probe.json"
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, str(Path(__file__).with_name("fp8_probe.py")), str(out)], cwd=REPO,
                            stdout=fh, stderr=subprocess.STDOUT, timeout=120).returncode
    if not out.is_file():
        raise RuntimeError(f"the FP8 probe exited {rc} without a result; see logs/{log.name}")
    rec = json.loads(out.read_text())
    bad = [k for k, c in rec["checks"].items() if not c["ok"]]
    timing = (f"fwd+bwd {rec['fp8_fwd_bwd_ms']} ms FP8 vs {rec['bf16_fwd_bwd_ms']} ms bf16 = {rec['fp8_speedup']}x"
              if rec["fp8_speedup"] else "untimed (no GPU)")
    rec["result"] = f"{'FAILED: ' + ', '.join(bad) if bad else 'kernel checks OK'}; {timing}"
    return rec


def dry_run(rows: list[Row], folders: dict[str, Path], work: Path) -> None:
    """Everything before CUDA: imports, each kit row's spec choice and layer spec, the table from made-up rows."""
    import megatron.core  # noqa: F401

    from experiment.folder import load_schema
    from experiment.train import gpu
    from experiment.train import runner as _runner  # noqa: F401  (imports the whole training path)

    for row in rows:
        if row.kind == "probe":  # on CPU: the same checks on small shapes through torch's CPU _scaled_mm
            print(f"  {row.key}: {row.label}: on CPU: {probe_row(work / 'fp8_probe.log', work)['result']}")
            continue
        cfg = load_schema(folders[row.folder or row.key]).config
        if row.kind == "kit":
            c = gpu.choose(cfg.model.shape, cfg.model.seq_length, 80, te_available=False, fp8=cfg.training.fp8,
                           fusions=tuple(cfg.training.fusions),
                           micro_batch_size=cfg.training.micro_batch_size, global_batch_size=GBS)
            gpu.layer_spec_for(c.spec, tuple(cfg.training.fusions))
            print(f"  {row.key}: {row.label}: spec {c.spec}, recompute {c.recompute}, micro-batch "
                  f"{cfg.training.micro_batch_size} (on 80 GiB: {c.micro_batch_size}, timed {c.candidates or '-'})")
    md = table.render(table.fake_rows([r.key for r in rows]), table.machine(), "dry run (made-up numbers)")
    (work / "dry_run_table.md").write_text(md + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "gpu-bench")
    p.add_argument("--part", default="1", help="1, 2, repeat, or a comma list (the dry run: 1,2)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--only", default="", help="row keys to run (default: the part's rows)")
    p.add_argument("--commit", default=None, help="the kit commit, where the tree has no .git")
    p.add_argument("--budget-s", type=float, default=330, help="no row starts that would end past this")
    p.add_argument("--seq", type=int, default=SEQ)
    p.add_argument("--smoke", action="store_true", help="CPU: every BF16 row on the tiny preset in fp32, 7 steps "
                   "(FP8 rows skipped): the check's own code end to end, no numbers that mean anything")
    p.add_argument("--bare", nargs=3, metavar=("FOLDER", "ITERS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare:
        bare_main(Path(args.bare[0]), int(args.bare[1]), Path(args.bare[2]))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.part.split(",")
    if "repeat" in parts:
        return repeat.main(args)
    rows = [r for part in parts for r in PARTS[part] if not args.only or r.key in args.only.split(",")]
    sig = repeat.write_shards(args.work / "shards")
    train = args.work / "training"
    if args.smoke:
        rows = [replace(r, preset="tiny", steps=min(r.steps, 7)) for r in rows if not r.fp8 and r.kind != "probe"]
    folders = {r.key: make_folder(train / f"gpu-{r.key}", sig, r, 8 if str(r.mbs).startswith("from:") else r.mbs,
                                  args.seq, args.smoke) for r in rows if r.kind == "kit"}
    from experiment.folder import load_schema

    for f in folders.values():
        load_schema(f)  # the kit's own validation of every folder
    try:
        import torch  # noqa: F401
    except ImportError as err:  # a dry run under a Python without torch (CI's 3.12 check of the wheels)
        if not args.dry_run:
            raise
        print(f"dry run: torch does not import here ({err}); folders, shards and wheels checked, the training "
              "path's imports not")
        return 0
    print(f"part {args.part}: {', '.join(r.key for r in rows)}; estimated {sum(r.estimate_s() for r in rows):.0f} s "
          f"(budget {args.budget_s:.0f} s); folders under {train}", flush=True)
    if args.dry_run:
        dry_run(rows, folders, args.work)
        print("dry run: folders, shards, imports and layer specs ready; stopping before the first CUDA call")
        return 0
    return run_rows(args, rows, folders, train)


def run_rows(args, rows: list[Row], folders: dict[str, Path], train: Path) -> int:
    record = table.machine(args.commit)
    print(json.dumps(record), flush=True)
    done: list[dict] = []
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    t_start = time.time()
    name = f"gpu_check_part{args.part.replace(',', '+')}"
    for row in rows:
        base = {"key": row.key, "label": row.label, "kind": row.kind, "preset": row.preset, "seq_length": args.seq,
                "global_batch_size": GBS, "steps": row.steps, "row": asdict(row),
                **{k: record.get(k) for k in ("commit", "gpu", "card", "driver", "torch", "megatron_core")}}
        elapsed = time.time() - t_start
        if elapsed + row.estimate_s() > args.budget_s:
            done.append({**base, "result": f"skipped: {elapsed:.0f} s + ~{row.estimate_s():.0f} s > budget "
                                           f"{args.budget_s:.0f} s"})
            continue
        t0 = time.time()
        try:
            if str(row.mbs).startswith("from:"):  # the micro-batch another row used (FP8 at BF16's pick)
                src = next((r for r in done if r["key"] == row.mbs[5:]), {})
                make_folder(folders[row.key], repeat.write_shards(args.work / "shards"), row,
                            src.get("micro_batch_size") or "auto", args.seq, args.smoke)
            if row.kind == "probe":
                rec = probe_row(logs / f"{row.key}.log", args.work)
            elif row.kind == "kit":
                rec = kit_row(row, folders[row.key], logs / f"{row.key}.log", args.seq)
            else:
                rec = bare_row(row, folders[row.folder], logs / f"{row.key}.log", args.work, args.seq)
        except Exception as err:  # noqa: BLE001 - one failing row must not stop the others
            rec = {"result": f"FAILED: {err}"}
        done.append({**base, **rec, "seconds": round(time.time() - t0, 1)})
        short = {k: v for k, v in done[-1].items() if k not in ("step_seconds", "losses", "windows", "row", "commit", "gpu",
                                                                "driver", "torch", "megatron_core")}
        print(f"[{time.time() - t_start:5.0f}s] {json.dumps(short)}", flush=True)
        (args.out / f"{name}.json").write_text(json.dumps({"machine": record, "rows": done}, indent=1))
    shutil.make_archive(str(args.out / f"logs_part{args.part}"), "gztar", logs)
    shutil.rmtree(logs)
    md = table.render(done, record, f"GPU check part {args.part}: seq {args.seq}, global batch {GBS}, bf16 weights")
    print(md)
    (args.out / f"{name}.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
