"""The GPU path's new folder choices on CPU (issue 31): micro_batch_size = "auto" (validation, the candidates the
runner times, 1 on CPU, the lock's number passed again by reproduce), the 3B preset's recompute, the fusion
switches' spec and config fields, and the runner's whole-step timing window in run_status.json."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from experiment.folder import TrainingSection
from experiment.model.presets import PRESETS
from experiment.train import gpu

ONE_B, THREE_B = PRESETS["llama3.2-1b"], PRESETS["llama3.2-3b"]


@pytest.mark.parametrize("value", [0, -2, "Auto", "max", 2.5, True, None])
def test_bad_micro_batch_sizes_say_what_is_allowed(value):
    with pytest.raises(ValueError, match='whole number >= 1 or "auto"'):
        TrainingSection(micro_batch_size=value, train_iters=1)


def test_micro_batch_auto_and_numbers_from_set_are_accepted():
    assert TrainingSection(micro_batch_size="auto", train_iters=1).micro_batch_size == "auto"
    assert TrainingSection(micro_batch_size="8", train_iters=1).micro_batch_size == 8  # --set gives strings


def test_fp8_needs_bf16():
    with pytest.raises(ValueError, match='precision = "bf16"'):
        TrainingSection(fp8=True, precision="fp32", train_iters=1)


def test_auto_times_the_largest_sizes_that_fit_and_divide():
    h100 = gpu.choose(ONE_B, 2048, 80, te_available=False, micro_batch_size="auto", global_batch_size=16)
    assert h100.candidates == (8, 4, 2) and h100.micro_batch_size == 4  # the estimate's pick starts the run
    h200 = gpu.choose(ONE_B, 2048, 141, te_available=False, micro_batch_size="auto", global_batch_size=16)
    assert h200.candidates == (16, 8, 4)
    odd = gpu.choose(ONE_B, 2048, 141, te_available=False, micro_batch_size="auto", global_batch_size=12)
    assert odd.candidates == (4, 2, 1)  # divisors of the per-rank batch only
    fixed = gpu.choose(ONE_B, 2048, 80, te_available=False, micro_batch_size=8, global_batch_size=16)
    assert fixed.candidates == () and fixed.micro_batch_size == 8


def test_3b_preset_is_llama_3_2_3b_and_fits_one_gpu():
    assert (THREE_B.num_layers, THREE_B.hidden_size, THREE_B.ffn_hidden_size) == (28, 3072, 8192)
    assert (THREE_B.num_attention_heads, THREE_B.num_query_groups, THREE_B.kv_channels) == (24, 8, 128)
    assert 3.2e9 < gpu.parameters(THREE_B) < 3.3e9  # 3.21B with tied embeddings, as published
    h100 = gpu.choose(THREE_B, 2048, 80, te_available=False, micro_batch_size="auto", global_batch_size=16)
    assert "fits" in h100.reason and h100.recompute == "none" and h100.candidates == (2, 1)
    h200 = gpu.choose(THREE_B, 2048, 141, te_available=False, micro_batch_size="auto", global_batch_size=16)
    assert h200.recompute == "none" and h200.candidates[0] == 8
    tight = gpu.choose(THREE_B, 8192, 80, te_available=False, global_batch_size=16)
    assert tight.recompute == "full" and "fits" in tight.reason  # seq 8192 on 80 GB: full recompute


def test_cpu_resolves_auto_to_one_and_says_so(capsys):
    from experiment.train.build import device_setup

    t = SimpleNamespace(fp8=False, micro_batch_size="auto", attention="sdpa", fusions=["rope"], peak_tflops=None)
    dev = device_setup(t, PRESETS["tiny"], 64, SimpleNamespace(rank=0, world_size=1))
    assert dev.micro_batch_size == 1 and dev.fusions == () and dev.layer_spec == "local-sdpa"
    out = capsys.readouterr().out + capsys.readouterr().err
    assert "auto" in out and "1" in out and "not applied on CPU" in out


def test_fusion_switches_change_the_spec_and_the_config():
    from experiment.model import fused

    spec = gpu.layer_spec_for("local-sdpa", ("rmsnorm",))
    assert spec.submodules.input_layernorm.__name__ == "CompiledRMSNorm"
    assert spec.submodules.pre_mlp_layernorm.__name__ == "CompiledRMSNorm"
    assert gpu.layer_spec_for("local-sdpa").submodules.input_layernorm.__name__ != "CompiledRMSNorm"
    choice = gpu.choose(ONE_B, 2048, 80, te_available=False, global_batch_size=16)
    assert gpu.config_extra(choice, ("cross-entropy",)) == {"cross_entropy_loss_fusion": True,
                                                             "cross_entropy_fusion_impl": "native"}
    assert gpu.config_extra(choice, ("rope", "rmsnorm")) == {}  # not config fields: spec and a compiled function
    assert set(fused.FUSIONS) == {"rmsnorm", "rope", "cross-entropy", "linear-cross-entropy"}
    norm = fused.compiled_rms_norm_class()(None, 64, eps=1e-5)
    assert list(norm.state_dict()) == ["weight"]  # the same checkpoint as torch's RMSNorm


def test_reproduce_passes_the_measured_micro_batch_again():
    from experiment.lock.verify import locked_overrides

    def lock(mbs_in_folder, overrides=(), used=8):
        return SimpleNamespace(config=SimpleNamespace(overrides=list(overrides),
                                                      experiment={"training": {"micro_batch_size": mbs_in_folder}}),
                               launch=SimpleNamespace(micro_batch_size=used))

    assert locked_overrides(lock(4, ["training.lr=1e-4"])) == ("training.lr=1e-4",)
    assert locked_overrides(lock("auto")) == ("training.micro_batch_size=8",)
    assert locked_overrides(lock("auto", ["training.micro_batch_size=auto", "training.lr=1e-4"], 2)) == (
        "training.lr=1e-4", "training.micro_batch_size=2")


@pytest.mark.slow
def test_auto_on_cpu_runs_at_one_and_the_lock_records_it(corpus, tmp_path):
    """``experiment run`` of a folder with micro_batch_size = "auto" on CPU: the run uses 1, run_status.json and
    run.lock.json say 1, reproduce would pass 1 again; the status keeps each whole step's time (the window)."""
    import json

    from typer.testing import CliRunner

    from experiment.cli import app
    from experiment.lock import lockfile
    from experiment.lock.verify import locked_overrides
    from tests.train.corpus import make_folder

    folder = make_folder(tmp_path / "run", corpus, nproc=1, iters=3, mbs='"auto"', gbs=2, eval_iters=0,
                         save_interval=100)
    res = CliRunner().invoke(app, ["run", str(folder)])
    assert res.exit_code == 0, res.output
    status = json.loads((folder / "logs" / "run_status.json").read_text())
    assert status["micro_batch_size"] == 1 and status["fp8"] is None and status["fusions"] == []
    assert len(status["recent_step_seconds"]) == 2  # 3 whole steps, the first (warm-up) left out
    assert status["step_s"] == pytest.approx(sum(status["recent_step_seconds"]) / 2, rel=1e-3)
    lock = lockfile.read_lock(folder / "run.lock.json")
    assert lock.launch.micro_batch_size == 1 and lock.launch.fp8 is None
    assert lock.config.experiment["training"]["micro_batch_size"] == "auto"
    assert locked_overrides(lock) == ("training.micro_batch_size=1",)


def test_a_resumed_auto_run_keeps_its_micro_batch(tmp_path):
    from experiment import runlog
    from experiment.train import autobatch

    runlog.write_status(tmp_path, {"state": "running", "iteration": 40, "micro_batch_size": 4})
    assert autobatch.kept(tmp_path, 40, (8, 4, 2)) == 4
    assert autobatch.kept(tmp_path, 0, (8, 4, 2)) is None  # a new run measures
    assert autobatch.kept(tmp_path, 40, (16, 8)) is None  # not a candidate on this GPU: measure again


def test_the_fused_loss_leaves_room_for_a_larger_micro_batch():
    plain = gpu.choose(ONE_B, 2048, 80, te_available=False, micro_batch_size="auto", global_batch_size=32)
    fused = gpu.choose(ONE_B, 2048, 80, te_available=False, micro_batch_size="auto", global_batch_size=32,
                       fusions=("linear-cross-entropy",))
    assert plain.candidates == (8, 4, 2) and fused.candidates == (16, 8, 4)  # no 16k x 128k logits held
    assert gpu.estimate_bytes(ONE_B, 2048, 8, "none", chunked_logits=True) < gpu.estimate_bytes(ONE_B, 2048, 8, "none")
