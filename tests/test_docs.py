"""The documentation: generated pages match the code, every config field is described, the site builds in
strict mode (a broken link or anchor fails), README stays a front door."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from experiment import docs

ROOT = Path(__file__).resolve().parents[1]


def test_generated_pages_are_current():
    stale = docs.stale()
    assert not stale, f"stale generated docs: {stale}; fix: python -m experiment.docs"


def test_every_config_field_is_described():
    assert docs.undescribed_fields() == [], "add Field(description=...) in experiment/folder.py"


def test_the_staleness_check_notices_a_change(tmp_path):
    for name, text in docs.pages().items():
        (tmp_path / name).write_text(text)
    assert docs.stale(tmp_path) == []
    page = tmp_path / docs.TOML_PAGE
    page.write_text(page.read_text().replace("peak learning rate", "learning rate"))
    assert docs.stale(tmp_path) == [docs.TOML_PAGE]


def test_site_builds_in_strict_mode(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "site" / "experiment-toml" / "index.html").is_file()


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    assert "<!-- setup:begin -->" in text and "<!-- setup:end -->" in text
    for page in ("docs/experiment-toml.md", "docs/cli.md", "docs/mixture.md", "bench/README.md", "ARCHITECTURE.md"):
        assert f"]({page})" in text, page
    import re

    outside_setup = re.sub(r"The two commands.*?<!-- setup:end -->", "", text, flags=re.S)  # issue 16's block
    broken = [link for link in re.findall(r"\]\(([^)#\s]+)", outside_setup)
              if "://" not in link and not (ROOT / link).exists()]
    assert not broken, f"README.md links to missing files: {broken}"
