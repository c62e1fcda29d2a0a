"""The README's code, extracted from README.md itself and run as written, so the docs cannot drift.

The research examples use the two packaged pretrained models (offline). The three "Extending" files (an
encoder kind, a fusion, a task) are imported as user modules and used together in one real run, whose saved
model is then reloaded.
"""

from __future__ import annotations

import importlib
import os
import re
import sys

import numpy as np
import pytest
import torch

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _sections() -> dict[str, list[str]]:
    """Python code blocks of README.md by '## ' section title."""
    text = open(README, encoding="utf-8").read()
    out: dict[str, list[str]] = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        title = part.splitlines()[0].strip()
        out[title] = re.findall(r"```python\n(.*?)```", part, flags=re.S)
    return out


def _run_block(code: str, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)  # the examples write runs/... and /tmp/img_assets
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_encoders_example(tmp_path, monkeypatch):
    (block,) = _sections()["Encoders"]
    ns = _run_block(block, tmp_path, monkeypatch)
    assert ns["t"].pooled.shape == (2, 384) and ns["i"].tokens.shape[-1] == ns["image"].token_dim
    assert ns["a"].mask.shape[0] == 1 and ns["clone"].output_dim == 1280


def test_research_examples_train_and_reload(tmp_path, monkeypatch):
    fused_block, dual_block = _sections()["Models in research code"]
    ns = _run_block(fused_block, tmp_path, monkeypatch)
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

    ns = _run_block(dual_block, tmp_path, monkeypatch)
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
def user_modules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_code")
    blocks = _sections()["Extending"]
    assert len(blocks) == 3
    for name, code in zip(("readme_my_encoders", "readme_my_fusions", "readme_my_tasks"), blocks):
        (folder / f"{name}.py").write_text(code)
    sys.path.insert(0, str(folder))
    try:
        yield [importlib.import_module(n) for n in ("readme_my_encoders", "readme_my_fusions", "readme_my_tasks")]
    finally:
        sys.path.remove(str(folder))


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


def test_own_data_yaml_selects_the_method(tmp_path, monkeypatch):
    """The "Bring your own data" YAML, as written, loads against its CSV and runs method auto's selection."""
    from multimodal.config import load_config
    from multimodal.training.auto import auto_applies

    section = open(README, encoding="utf-8").read().split("### Bring your own data", 1)[1]
    csv = re.search(r"```csv\n(.*?)```", section, flags=re.S).group(1)
    yaml_text = re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    os.makedirs("data")
    with open("data/train.csv", "w", encoding="utf-8") as f:
        f.write(csv)
    with open("my.yaml", "w", encoding="utf-8") as f:
        f.write(yaml_text)
    cfg = load_config("my.yaml")
    assert cfg.train.method == "auto" and cfg.train.time_budget_s == 600 and auto_applies(cfg)
