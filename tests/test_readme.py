"""The code of README.md and docs/*.md, extracted from the pages themselves, so the docs cannot drift.

Python blocks run as written (the research examples with the two packaged pretrained models, offline; the
three "Extending" files are imported as user modules and used together in one real run whose saved model
is reloaded). Every shell command is dry-run (`docs_code.check_command`): parsed by the program's own
parser, its config and overrides checked as a real run would. Files a page tells the reader to write are
written into a shared working folder first. See `docs_code` for the markers a block may carry.
"""

from __future__ import annotations

import csv
import importlib
import os
import sys

import numpy as np
import pytest
import torch
import yaml
from docs_code import ROOT, Block, all_blocks, block_by_id, check_command, commands
from PIL import Image

BLOCKS = all_blocks()
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Files the pages refer to as the reader's own, beyond the ones they show: copies of the table they show.
# (The splits stand in for the ones the main job writes, which the streaming example reads.)
READER_COPIES = ["data/test.csv", "data/val.csv", "outputs/text_image_classification/splits/train.csv",
                 "outputs/text_image_classification/splits/validation.csv",
                 "outputs/text_image_classification/splits/test.csv"]


def _write_images(table: str) -> None:
    """Small real images for every image path a CSV names (relative to the CSV)."""
    with open(table, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for value in row.values():
                if value and value.lower().endswith(IMAGE_SUFFIXES):
                    path = os.path.join(os.path.dirname(table), value)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    Image.new("RGB", (32, 32), (hash(value) % 255, 80, 160)).save(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A working folder holding what the pages tell the reader to write, with the repository's recipes."""
    folder = tmp_path_factory.mktemp("docs_workspace")
    for name in ("recipes", "benchmarks", "constraints.txt", "pyproject.toml", ".ci"):
        os.symlink(os.path.join(ROOT, name), folder / name)
    for block in BLOCKS:
        target = block.option("file")
        if target:
            path = folder / target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.code, encoding="utf-8")
            if target.endswith(".csv"):
                _write_images(str(path))
    for copy in READER_COPIES:
        (folder / copy).parent.mkdir(parents=True, exist_ok=True)
        (folder / copy).write_text((folder / "data/train.csv").read_text())
        _write_images(str(folder / copy))
    return folder


@pytest.fixture
def in_workspace(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.syspath_prepend(str(workspace))
    monkeypatch.setenv("MULTIMODAL_CACHE", str(workspace / "cache"))
    return workspace


def test_every_block_is_known():
    """A block in a language the tests do not handle would go unchecked: refuse it."""
    unknown = [f"{b.where} ({b.lang or 'no language'})" for b in BLOCKS if b.lang not in {"python", "bash", "yaml",
                                                                                          "csv", "text"}]
    assert not unknown, f"blocks the tests cannot check: {unknown}; tag them python/bash/yaml/csv or text"


# ------------------------------------------------------------------------------------------ shell commands
def _shell_commands():
    out = []
    for page in sorted({b.page for b in BLOCKS}):
        variables = {"PWD": "."}
        for block in (b for b in BLOCKS if b.page == page and b.lang == "bash"):
            for command in commands(block, variables):
                out.append(pytest.param(block, command, id=command.where))
    return out


@pytest.mark.parametrize("block,command", _shell_commands())
def test_shell_command(block: Block, command, in_workspace, monkeypatch, capsys):
    if block.skip_reason:
        pytest.skip(block.skip_reason)
    for key, value in command.env.items():
        monkeypatch.setenv(key, value)
    result = check_command(command)
    if result.startswith("skip: "):
        pytest.skip(f"{command.text[:60]}: {result[6:]}")


# ------------------------------------------------------------------------------------------ data blocks
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in ("yaml", "csv")], ids=lambda b: b.where)
def test_data_block(block: Block, in_workspace):
    """YAML parses (a config fragment passes the config checks on top of a recipe; a search space is read
    by the tuner); a CSV parses as a manifest."""
    from multimodal.config.loading import config_from_dict, read_config_file
    from multimodal.config.merge import deep_merge
    from multimodal.data.manifest import read_manifest
    from multimodal.tuning.space import read_space

    path = in_workspace / (block.option("file") or f"block-{block.line}.{block.lang}")
    if not block.option("file"):
        path.write_text(block.code, encoding="utf-8")
    if block.lang == "csv":
        rows = read_manifest(str(path))
        assert rows and set(rows[0]) >= {"label"}
        return
    values = yaml.safe_load(block.code)
    assert isinstance(values, dict) and values
    if block.option("part-of"):
        whole = yaml.safe_load(open(os.path.join(ROOT, block.option("part-of")), encoding="utf-8"))
        assert _excerpt_of(values, whole), f"{block.where} differs from {block.option('part-of')}"
        return
    base = read_config_file(os.path.join(ROOT, "recipes/configs/text_image_classification.yaml"))
    if all("." in key for key in values):
        assert read_space(str(path), base)
    elif set(values) <= {"data", "model", "train", "eval", "retrieval"}:
        config_from_dict(deep_merge(base, values))
    else:
        assert block.option("file"), f"{block.where}: a YAML block that is neither a config nor a search space"


def _excerpt_of(part, whole) -> bool:
    """Whether every value `part` shows is `whole`'s value at the same place."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and _excerpt_of(v, whole[k]) for k, v in part.items())
    return part == whole


# ------------------------------------------------------------------------------------------ python blocks
def _generic_pages():
    pages = {b.page for b in BLOCKS if b.lang == "python" and not b.option("id") and not b.option("file")}
    return sorted(pages)


@pytest.mark.parametrize("page", _generic_pages())
def test_python_blocks_of_page(page: str, in_workspace):
    """The page's Python blocks, in order, in one namespace (blocks marked skip are reported, not run)."""
    namespace: dict = {"__name__": "docs_example"}
    skipped = []
    for block in (b for b in BLOCKS if b.page == page and b.lang == "python"):
        if block.option("id") or block.option("file"):
            continue
        if block.skip_reason:
            skipped.append(f"{block.where}: {block.skip_reason}")
            continue
        exec(compile(block.code, block.where, "exec"), namespace)
    if skipped and len(namespace) == 2:  # only __name__ and __builtins__: nothing ran
        pytest.skip("; ".join(skipped))


def _run_block(block: Block, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)  # the examples write runs/... and /tmp/img_assets
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(block.code, block.where, "exec"), namespace)
    return namespace


def test_install_pins_match_the_constraints():
    """The CPU-only line pins torch, torchvision and torchaudio to the constraints file's versions."""
    pins = dict(line.strip().split("==") for line in open(os.path.join(ROOT, "constraints.txt"))
                if "==" in line and not line.startswith("#"))
    pages = [b for b in BLOCKS if b.lang == "bash" and "download.pytorch.org/whl/cpu" in b.code]
    assert pages, "the CPU-only install line is gone"
    for block in pages:
        for name in ("torch", "torchvision", "torchaudio"):
            assert f"{name}=={pins[name]}" in block.code, f"{block.where}: {name} is not pinned to {pins[name]}"


def test_architecture_tree_names_real_paths():
    (tree,) = [b for b in BLOCKS if b.lang == "text" and b.code.startswith("encoders/")]
    names = []
    for line in tree.code.splitlines():
        if not line.strip() or line.startswith(" " * 6):
            continue
        name = line.split()[0]
        prefix = "multimodal/" if line.startswith("  ") else ""
        assert os.path.exists(os.path.join(ROOT, prefix + name)), f"architecture names {prefix + name}"
        names.append(name)
    assert len(names) > 10


# ------------------------------------------------------------------------------------------ named examples
def test_encoders_example(tmp_path, monkeypatch):
    ns = _run_block(block_by_id("encoders"), tmp_path, monkeypatch)
    assert ns["t"].pooled.shape == (2, 384) and ns["i"].tokens.shape[-1] == ns["image"].token_dim
    assert ns["a"].mask.shape[0] == 1 and ns["clone"].output_dim == 1280


def test_research_examples_train_and_reload(tmp_path, monkeypatch):
    ns = _run_block(block_by_id("research-fused"), tmp_path, monkeypatch)
    out, model, optimizer = ns["out"], ns["model"], ns["optimizer"]
    assert out.logits.shape == (3, 2) and torch.isfinite(out.loss)
    names = {id(p): n for n, p in model.named_parameters()}
    moved = {names[id(p)] for p, state in optimizer.state.items() if state["exp_avg"].abs().sum() > 0}
    for prefix in ("encoders.text.", "encoders.image.", "fusion.", "head."):  # the step reached every part
        assert any(n.startswith(prefix) for n in moved), prefix
    same = ns["same"]
    batch = ns["batch"]
    model.eval()
    with torch.no_grad():
        assert torch.equal(same(**batch).logits, model(**batch).logits)

    ns = _run_block(block_by_id("research-dual"), tmp_path, monkeypatch)
    assert ns["texts"].shape == (3, 256) and ns["images"].shape == (2, 256)
    model = ns["model"]
    assert torch.isfinite(ns["loss"]) and model.head.logit_scale.grad is not None
    assert {m: e.spec for m, e in model.encoders.items()} == {
        "text": "text:sentence-transformers/all-MiniLM-L6-v2", "image": "image:tf_efficientnet_lite0"}
    torch.testing.assert_close(ns["texts"].norm(dim=-1), torch.ones(3))  # normalised embeddings
    torch.testing.assert_close(ns["out"]["logit_scale"], model.head.clamped_logit_scale().exp())
    image = model.encoders["image"]  # locked but its last group: gradients reached that group only
    grads = [p.grad is not None for p in image.parameters()]
    assert any(grads) and not all(grads) and not image.backbone.conv_stem.weight.requires_grad
    reloaded = ns["load_model"]("runs/towers")
    image_inputs = image.preprocess([np.zeros((8, 8, 3), np.uint8)])
    with torch.no_grad():
        assert torch.equal(reloaded.encode("image", image_inputs), model.eval().encode("image", image_inputs))


@pytest.fixture(scope="module")
def user_modules(workspace):
    names = ("my_encoders", "my_fusions", "my_tasks")
    assert all((workspace / f"{n}.py").is_file() for n in names)
    sys.path.insert(0, str(workspace))
    try:
        yield [importlib.import_module(n) for n in names]
    finally:
        sys.path.remove(str(workspace))


def test_extending_files_work_together_in_a_real_run(tmp_path, user_modules, day_night_manifest):
    from encoders import create_encoder, list_encoders
    from fusion import list_fusions
    from multimodal import MultimodalModel, list_tasks, load_config, load_model, run

    assert "text-hash" in {e.kind for e in list_encoders()} and "max" in {f.name for f in list_fusions()}
    assert "calibrated_classification" in {t.name for t in list_tasks()}
    enc = create_encoder("text-hash:512")
    assert enc(enc.preprocess(["a sunny day", None])).pooled.shape == (2, 64)
    cfg = load_config(None, [
        f"data.train={day_night_manifest}", "data.audio_column=null", "data.num_workers=0",
        "data.feature_cache=null", "model.encoders={text: 'text-hash:512', image: 'image:test_efficientnet'}",
        "model.encoder_kwargs={image: {img_size: 32}}", "model.pretrained=false", "model.fusion=max",
        "model.fusion_dim=16", "model.task=calibrated_classification", "train.epochs=3", "train.batch_size=8",
        "train.head_lr=0.01", "train.encoder_lr=0.01", "train.log_with=none", "train.progress_bar=false",
        f"train.output_dir={tmp_path / 'out'}",
    ])
    metrics = run(cfg)
    assert metrics["metric_for_best"] == "ece" and 0.0 <= metrics["test"]["ece"] <= 1.0
    assert metrics["fusion"] == "max" and metrics["test"]["num_examples"] == 4
    history = [h["ece"] for h in metrics["history"]]
    assert metrics["best_epoch"] == 1 + int(np.argmin(history))  # selected by the task's direction: lower
    model = load_model(tmp_path / "out" / "model")
    assert isinstance(model, MultimodalModel) and type(model.fusion).__name__ == "MaxFusion"
    assert model.encoders["text"].spec == "text-hash:512"


def test_own_data_yaml_selects_the_method(in_workspace):
    """The own-data page's my.yaml, as written (the workspace holds it and its CSV), runs method auto's selection."""
    from multimodal.config import load_config
    from multimodal.training.auto import auto_applies

    cfg = load_config("my.yaml")
    assert cfg.train.method == "auto" and cfg.train.time_budget_s == 600 and auto_applies(cfg)
