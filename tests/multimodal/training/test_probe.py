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
from multimodal.training import probe as probe_module
from multimodal.training.probe import (
    DEFAULT_CS,
    LogisticPath,
    choose_c,
    cv_folds,
    cv_sweep,
    fit_logistic,
    fit_path,
)


def test_fit_logistic_is_scikit_learns_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 7))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + rng.normal(0, 0.7, 120) > 0).astype(int) + (x[:, 3] > 1)
    for labels, k in ((y, 3), ((y > 0).astype(int), 2)):  # multinomial, and binary written as two halves
        for c in (0.05, 1.0, 20.0):
            ref = LogisticRegression(C=c, max_iter=1000).fit(x, labels)
            w, b = fit_logistic(torch.from_numpy(x), torch.from_numpy(labels), k, c)
            ours = torch.softmax(torch.from_numpy(x) @ w.T + b, 1).numpy()
            assert np.allclose(ours, ref.predict_proba(x), atol=1e-6)
    multi = np.stack([y == 0, y == 1, np.ones(120, bool)], 1).astype(int)  # the last label is in every row
    w, b = fit_logistic(torch.from_numpy(x), torch.from_numpy(multi), 3, 1.0, multi_label=True)
    ref = LogisticRegression(C=1.0, max_iter=1000).fit(x, multi[:, 1])
    assert np.allclose(torch.sigmoid(torch.from_numpy(x) @ w[1] + b[1]).numpy(), ref.predict_proba(x)[:, 1], atol=1e-6)
    assert torch.equal(w[2], torch.zeros(7)) and b[2] > 5  # a constant label: a confident constant


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


def test_probe_run_cross_validates_c_refits_and_saves_a_reloadable_model(tmp_path, monkeypatch):
    fits = []  # the final fit and the refit follow the path cross-validation scored
    monkeypatch.setattr(probe_module, "fit_path", lambda *a: fits.append((a[4], a[5])) or fit_path(*a))
    metrics = run(load_config(None, _overrides(tmp_path, "train.probe_cs=[0.001, 0.1, 10.0]")))
    probe = metrics["probe"]
    assert fits == [([0.001, 0.1, 10.0], probe["C"])] * 2
    assert [row["C"] for row in probe["sweep"]] == [0.001, 0.1, 10.0]
    by_accuracy = min(probe["sweep"], key=lambda row: (-row["accuracy"], row["log_loss"], row["C"]))["C"]
    assert probe["C"] == by_accuracy and probe["chosen_by"] == "cross-validated accuracy"
    assert "5-fold StratifiedKFold" in probe["cv"] and "over 36 training rows, repeated 3 times" in probe["cv"]
    assert probe["refit_on_validation"] and probe["num_train"] == 36
    assert set(probe["validation_before_refit"]) >= {"accuracy", "macro_f1", "loss"}
    assert metrics["test"]["accuracy"] >= 0.8  # brightness is linearly separable in any conv features
    assert metrics["parameters"]["encoders_trainable"] == 0
    model = MultimodalModel.from_pretrained(tmp_path / "out" / "model")
    assert model.fusion.name == "standardized" and model.head.hidden_dim is None
    assert not torch.equal(model.fusion.scale, torch.ones_like(model.fusion.scale))  # statistics were saved


def test_probe_without_refit_keeps_train_statistics(tmp_path):
    metrics = run(load_config(None, _overrides(tmp_path, "train.refit_full=false", "train.probe_cs=[1.0]",
                                               "train.probe_cv_repeats=1")))
    assert metrics["probe"]["refit_on_validation"] is False and "repeated" not in metrics["probe"]["cv"]


def test_probe_cs_used_without_a_validation_split(tmp_path):
    # Regression: with no validation split the probe used C=1.0 and ignored train.probe_cs.
    metrics = run(load_config(None, _overrides(tmp_path, "train.probe_cs=[0.003, 0.03]", "data.split_column=null",
                                               "data.val_fraction=0", "data.test_fraction=0.25")))
    assert metrics["probe"]["C"] in (0.003, 0.03) and len(metrics["probe"]["sweep"]) == 2


def test_cv_folds_grouped_and_fallbacks():
    labels = np.repeat([0, 1], 20)
    groups = np.array([f"g{i % 8}" for i in range(40)])
    splits, note = cv_folds(labels, groups, 5)
    assert "StratifiedGroupKFold over 8 groups" in note and len(splits) == 5
    for train, test in splits:  # no group on both sides of a fold
        assert not set(groups[train]) & set(groups[test])
    splits, note = cv_folds(labels, np.array(["a", "b", "c"] * 13 + ["a"]), 5)
    assert len(splits) == 3 and "fewer than 5: too few groups" in note
    assert cv_folds(labels, np.array(["a"] * 40), 5) == ([], "no cross-validation: the training rows hold 1 group")
    assert cv_folds(np.array([0, 0, 0, 1]), None, 5)[0] == []  # a class with one row
    # the probe's repetitions: another seed, other folds (same scheme)
    again = [sorted(test.tolist()) for _, test in cv_folds(labels, groups, 5, seed=1)[0]]
    assert again != [sorted(test.tolist()) for _, test in cv_folds(labels, groups, 5, seed=0)[0]]


def test_fit_path_is_the_solution_cross_validation_scored():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 200))  # more features than rows: separable, so weak penalties stop where they start
    y = rng.integers(0, 3, 60)
    walked = LogisticPath(3)
    for c in DEFAULT_CS[:-1]:
        walked.fit(x, y, c)
    expected = walked.fit(x, y, DEFAULT_CS[-1])  # as cv_sweep reaches the largest C
    w, b = fit_path(3, False, x, y, DEFAULT_CS, DEFAULT_CS[-1])
    np.testing.assert_array_equal(w, expected[0])
    cold = LogisticPath(3).fit(x, y, DEFAULT_CS[-1])
    assert not np.allclose(cold[0], w, atol=1e-3)  # a cold start ends elsewhere: why the path is walked


def test_cv_c_not_picked_by_a_saturated_validation_split():
    # Regression: C was picked on a small validation split where every C scored 1.0 (a tie decided by noise);
    # cross-validated log-loss over the training rows separates the Cs.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20))
    y = (x[:, 0] + 0.8 * rng.normal(size=200) > 0).astype(int)
    sweep = cv_sweep(x, y, cv_folds(y, None, 5)[0], DEFAULT_CS, 2)
    assert len({round(row["log_loss"], 6) for row in sweep}) == len(DEFAULT_CS)
    chosen = choose_c(sweep, "log_loss")
    assert 1e-3 < chosen < 10 and choose_c(sweep, "accuracy") in DEFAULT_CS
    assert 1.0 in DEFAULT_CS and min(DEFAULT_CS) == 1e-4 and max(DEFAULT_CS) == 1e4


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
