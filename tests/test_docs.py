"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a missing anchor or an API
reference to a name that does not exist fails the build), the included files are the repository's own, and
the README's links point at files that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
pytest.importorskip("mkdocs", reason="the docs packages come with the dev extra")


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    page = (site / "api" / "encoders" / "index.html").read_text(encoding="utf-8")
    assert "create_encoder" in page and "EncoderOutput" in page  # the API reference came from the docstrings
    reliability = (site / "reliability" / "index.html").read_text(encoding="utf-8")
    first = open(os.path.join(ROOT, "RELIABILITY.md"), encoding="utf-8").read().splitlines()[0].lstrip("# ")
    assert first in reliability and "--8&lt;--" not in reliability  # included, not shown as a directive
    assert "Trainer overhead" in (site / "benchmarks" / "index.html").read_text(encoding="utf-8")


def test_readme_links_exist():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)]+)\)", text) if "://" not in link]
    assert links
    missing = [link for link in links if link and not os.path.exists(os.path.join(ROOT, link))]
    assert not missing, missing
