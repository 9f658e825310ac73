"""The demo's stages as `experiment demo --container` orders them.

The end-to-end run of the README's demo (real Debian text, SmolLM2-135M, torchrun with 2 processes, the HF
export, lm-eval, the report, `experiment reproduce` to the byte) is no longer a test of this suite: it ran
the whole demo (~13-15 min) inside `nox -s tests`, and CI's fresh-machine test ran the same demo again in a
pristine container. Its assertions now live in `.ci/fresh_machine.py` (`demo_checks`: the lock lists the
checkpoints, the re-run's outputs equal the lock's, ja/manual's eval loss falls while no English domain rises
by 0.1, lm-eval's perplexity of ja/manual falls with a positive gain, report.html's lm-eval section, the HF
export's config.json, loss.png and mixture.png), checked on the clone after the container's `nox -s demo`;
`.ci/run` runs it after the suite. `python3 .ci/fresh_machine.py --check-only .` checks a checkout where
`nox -s demo` ran; tests/test_fresh_machine_checks.py tests the checks themselves.
"""

from __future__ import annotations


def test_container_demo_builds_the_image_first_and_runs_and_reproduces_inside_it(tmp_path):
    """`experiment demo --container`: the CPU image is the first stage (skipped when present), and both the
    training run and its reproduction go through the image."""
    from experiment.demo import stages

    plain = stages(tmp_path, 3.0, container=False)
    boxed = stages(tmp_path, 3.0, container=True)
    assert len(boxed) == len(plain) + 1
    first = boxed[0]
    assert first.module == "experiment.lock.image" and first.argv == ("--flavor", "cpu") and callable(first.done)
    by_cmd = {s.argv[0]: s.argv for s in boxed[1:]}
    assert "--container" in by_cmd["run"] and "--container" in by_cmd["reproduce"]
    assert all("--container" not in s.argv for s in plain)
