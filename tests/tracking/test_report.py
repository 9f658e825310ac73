"""`experiment report FOLDER` on a real run (with held-out evals, `--set` overrides and a reproduce verdict),
opened in a real headless browser (Debian's chromium, driven by playwright): the page renders, every image
loads, the console stays clean, and the screenshot is not blank."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from tests.tracking.conftest import run_cli

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def test_report_renders_in_a_headless_browser(three_runs, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    folder = three_runs["b"]
    rep = run_cli("reproduce", str(folder / "run.lock.json"), "--out", str(tmp_path / "rerun"))
    assert rep.returncode == 0, (rep.stdout + rep.stderr)[-3000:]
    res = run_cli("report", str(folder))
    assert res.returncode == 0, res.stderr[-3000:]
    page_file = folder / "report.html"
    text = page_file.read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", text), "the report must not reference other files"
    for needle in ("Mixture", "held-out loss per domain", "Throughput", "run.lock.json (blake3",
                   "--set training.lr=0.002", "reproduced: the re-run matches the lock", "4 step(s) of losses"):
        assert needle in text, needle

    problems, shot = [], tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context()
        page = context.new_page()
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
                else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:80]}"))
        page.goto(page_file.as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        title = page.title()
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert title == "midtrain-kit run report: tiny-lock"
    assert headings == ["Run", "Mixture", "Loss and held-out evaluation", "Throughput", "Lockfile", "Reproduction"]
    assert {alt for alt, _, _ in images} == {"mixture chart", "training loss", "held-out loss per domain", "throughput"}
    assert all(done and width > 0 for _, done, width in images), images
    assert not problems, problems
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 1500 and pixels.std() > 20 and (pixels < 128).mean() > 0.01  # text and plots drawn
