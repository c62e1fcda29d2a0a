"""Metrics against scikit-learn on random predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from multimodal.metrics import binary_auroc, chance_metrics, compute_metrics


@pytest.mark.parametrize("num_classes", [2, 5])
def test_single_label_matches_sklearn(num_classes):
    rng = np.random.default_rng(num_classes)
    logits = rng.normal(size=(200, num_classes)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=200)
    logits[labels == 1, 1] += 1.0  # some signal
    out = compute_metrics(logits, labels, "single_label")
    pred = logits.argmax(-1)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert out["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert out["num_examples"] == 200
    if num_classes == 2:
        prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        assert out["auroc"] == pytest.approx(skm.roc_auc_score(labels, prob[:, 1]))
    else:
        assert "auroc" not in out


def test_auroc_with_ties():
    scores = np.array([0.1, 0.5, 0.5, 0.5, 0.9, 0.2, 0.2])
    labels = np.array([0, 1, 0, 1, 1, 0, 1])
    assert binary_auroc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores))
    assert np.isnan(binary_auroc(scores, np.zeros(7)))


def test_multi_label_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = (rng.random((150, 6)) < 0.3).astype(np.float32)
    logits = rng.normal(size=(150, 6)) + 2 * (labels - 0.5)
    out = compute_metrics(logits, labels, "multi_label")
    pred = (logits >= 0).astype(int)
    assert out["micro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="micro"))
    assert out["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro", zero_division=0))
    assert out["subset_accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))


def test_regression_matches_sklearn():
    rng = np.random.default_rng(1)
    target = rng.normal(size=80)
    pred = target + rng.normal(scale=0.3, size=80)
    out = compute_metrics(pred[:, None], target, "regression")
    assert out["mse"] == pytest.approx(skm.mean_squared_error(target, pred))
    assert out["mae"] == pytest.approx(skm.mean_absolute_error(target, pred))


def test_chance_is_majority_rate():
    train = np.array([0, 0, 0, 1, 2])
    test = np.array([0, 1, 1, 2])
    assert chance_metrics(train, test, "single_label") == {"majority_accuracy": 0.25, "uniform_accuracy": 1 / 3}
