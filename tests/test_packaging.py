"""The built wheel trains on its own: installed into a fresh virtual environment outside the repository, its
`multimodal-train` finds the recipe configs it ships and trains the built-in demo for one epoch.

The fresh environment installs the wheel alone (``--no-deps``, no index); its dependencies are this
interpreter's installed packages, seen through a ``.pth`` line, so nothing is downloaded and the repository
is not on the path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SOURCES = ("multimodal", "encoders", "fusion", "recipes/configs", "pyproject.toml", "README.md")


def _copy_sources(dest: str) -> str:
    """The files the wheel is built from, copied (links kept as links) so no build output lands in the repo."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in SOURCES:
        src, dst = os.path.join(ROOT, name), os.path.join(dest, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True, ignore=ignore)
        else:
            shutil.copy(src, dst)
    return dest


def _fresh_env(folder: str) -> str:
    """A venv on the base interpreter that sees this environment's packages, but not the repository."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", folder], check=True, timeout=120)
    python = os.path.join(folder, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    shared = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    with open(os.path.join(site, "shared-dependencies.pth"), "w") as f:
        f.write("\n".join(shared) + "\n")
    return python


@pytest.mark.slow
def test_the_wheel_trains_the_demo_from_outside_the_repo(tmp_path):
    src = _copy_sources(str(tmp_path / "src"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "wheels"), src], check=True, timeout=300)
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "multimodal/recipe_configs/text_image_classification.yaml" in names and "multimodal/train.py" in names
    python = _fresh_env(str(tmp_path / "venv"))
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index", "--no-deps",
                    str(wheel)], check=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MULTIMODAL_CACHE=str(tmp_path / "cache"))
    found = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('multimodal').origin)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert found.startswith(str(tmp_path / "venv"))  # the installed wheel, not the repository
    configs = os.path.join(os.path.dirname(found), "recipe_configs")
    assert os.path.isdir(configs) and not os.path.islink(configs)  # real files, copied into the wheel
    train = os.path.join(os.path.dirname(python), "multimodal-train")
    proc = subprocess.run([train, "--recipe", "text_image_classification", "train.epochs=1", "data.demo_size=40",
                           "eval.baselines=false", "train.output_dir=out"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"outputs in {work / 'out'}" in proc.stdout
    metrics = json.loads((work / "out" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["task"] == "single_label" and "test" in metrics
    assert (work / "out" / "model" / "model.safetensors").exists() and (work / "out" / "report.html").exists()
