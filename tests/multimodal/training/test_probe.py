"""The linear probe: same minimiser as scikit-learn, C chosen on validation, refit, saved like any classifier."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fusion import StandardizedConcat
from multimodal import MultimodalModel, run
from multimodal.config import ConfigError, load_config
from multimodal.training.probe import fit_logistic


def test_fit_logistic_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 7))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + rng.normal(0, 0.7, 120) > 0).astype(int) + (x[:, 3] > 1)
    for c in (0.05, 1.0, 20.0):
        ref = LogisticRegression(C=c, max_iter=20000, tol=1e-10).fit(x, y)
        w, b = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, c)
        ours = x @ w.numpy().T + b.numpy()
        # softmax is shift-invariant: compare centred logits
        theirs = ref.decision_function(x)
        assert np.allclose(ours - ours.mean(1, keepdims=True), theirs - theirs.mean(1, keepdims=True), rtol=1e-3, atol=5e-3)


def test_standardized_concat_statistics_and_absent_modalities():
    fusion = StandardizedConcat({"a": 2, "b": 3})
    assert fusion.output_dim == 7  # 2 + 3 features + 2 presence bits
    a = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    b = torch.randn(3, 3)
    present = {"a": torch.tensor([True, True, True]), "b": torch.tensor([True, False, True])}
    raw, keep = fusion.concat({"a": a, "b": b}, present)
    fusion.set_statistics(raw, keep)
    out = fusion({"a": a, "b": b}, present)
    assert torch.allclose(out[:, :2].mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(out[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-5)
    assert torch.equal(out[1, 2:5], torch.zeros(3))  # absent: exact zeros, whatever its features were
    assert torch.equal(out[:, 5:], keep.float())


def _manifest(root) -> str:
    """Images whose class is their brightness: 3 classes, 20 rows each, split column."""
    os.makedirs(root / "img", exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        label = i % 3
        pixels = np.clip(40 + 80 * label + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        split = "train" if i < 36 else ("validation" if i < 45 else "test")
        rows.append({"image": f"img/{i}.png", "label": f"c{label}", "split": split})
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    return str(root / "m.csv")


def _overrides(tmp_path, *extra) -> list[str]:
    return [f"data.train={_manifest(tmp_path / 'data')}", "data.split_column=split", "data.text_column=null",
            "data.audio_column=null", "data.num_workers=0", f"data.feature_cache={tmp_path / 'cache'}",
            "model.encoders={image: 'image:test_efficientnet'}", "model.encoder_kwargs={image: {img_size: 32}}",
            "model.pretrained=false", "model.freeze_encoders=true", "train.linear_probe=true",
            f"train.output_dir={tmp_path / 'out'}", "train.log_with=none", "train.progress_bar=false",
            "eval.html_report=false", *extra]


def test_probe_run_selects_c_refits_and_saves_a_reloadable_model(tmp_path):
    metrics = run(load_config(None, _overrides(tmp_path, "train.probe_cs=[0.001, 0.1, 10.0]")))
    probe = metrics["probe"]
    assert [row["C"] for row in probe["sweep"]] == [0.001, 0.1, 10.0]
    best = max(row["macro_f1"] for row in probe["sweep"])
    tied = [row for row in probe["sweep"] if row["macro_f1"] == best]  # ties: the lower validation loss, then smaller C
    assert probe["C"] == min(tied, key=lambda row: (row["loss"], row["C"]))["C"]
    assert probe["refit_on_validation"] and probe["num_train"] == 36
    assert metrics["test"]["accuracy"] >= 0.8  # brightness is linearly separable in any conv features
    assert metrics["parameters"]["encoders_trainable"] == 0
    model = MultimodalModel.from_pretrained(tmp_path / "out" / "model")
    assert model.fusion.name == "standardized" and model.head.hidden_dim is None
    assert not torch.equal(model.fusion.scale, torch.ones_like(model.fusion.scale))  # statistics were saved


def test_probe_without_refit_keeps_train_statistics(tmp_path):
    metrics = run(load_config(None, _overrides(tmp_path, "train.refit_full=false", "train.probe_cs=[1.0]")))
    assert metrics["probe"]["refit_on_validation"] is False


def test_probe_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.linear_probe fits classifiers"):
        load_config(None, _overrides(tmp_path, "model.task=regression"))
    with pytest.raises(ConfigError, match="unset model.peft"):
        load_config(None, _overrides(tmp_path, "model.peft.r=4"))
    with pytest.raises(ConfigError, match="train.probe_cs"):
        load_config(None, _overrides(tmp_path, "train.probe_cs=[0]"))


def test_probe_init_starts_fine_tuning_at_the_probe_solution(tmp_path):
    # LP-FT with (almost) no learning is the probe without refit: same C, same head, same test predictions.
    # A LayerNorm backbone: BatchNorm running statistics would move in the training epoch even at LR 0.
    ln = "model.encoders={image: 'image:test_efficientnet_ln'}"
    # fp32 cached features: the fine-tuning run encodes live in fp32, and the heads must agree to 1e-6
    probe = run(load_config(None, _overrides(tmp_path / "lp", "train.refit_full=false", "train.probe_cs=[0.01, 1.0]", ln,
                                             "data.feature_cache_precision=fp32")))
    lpft = _overrides(tmp_path / "lpft", "train.probe_cs=[0.01, 1.0]", "train.epochs=1", "train.head_lr=1e-12",
                      "train.encoder_lr=0", "model.freeze_encoders=false", "data.feature_cache=null", ln)
    lpft = [o for o in lpft if o != "train.linear_probe=true"] + ["train.probe_init=true"]
    metrics = run(load_config(None, lpft))
    assert metrics["probe_init"]["C"] == probe["probe"]["C"]
    assert metrics["parameters"]["encoders_trainable"] > 0  # the encoders fine-tune from the probe
    assert metrics["test"]["accuracy"] == probe["test"]["accuracy"] >= 0.8
    a = MultimodalModel.from_pretrained(tmp_path / "lp" / "out" / "model").head.net[-1].weight
    b = MultimodalModel.from_pretrained(tmp_path / "lpft" / "out" / "model").head.net[-1].weight
    assert torch.allclose(a, b, atol=1e-6)


def test_probe_init_config_errors(tmp_path):
    base = [o for o in _overrides(tmp_path, "model.freeze_encoders=false") if o != "train.linear_probe=true"]
    with pytest.raises(ConfigError, match="set one of them"):
        load_config(None, [*base, "train.probe_init=true", "train.linear_probe=true"])
    with pytest.raises(ConfigError, match="model.head_hidden_dim=null"):
        load_config(None, [*base, "train.probe_init=true", "model.head_hidden_dim=64"])
    assert load_config(None, [*base, "train.probe_init=true"]).train.probe_init
