"""One metrics module: classification against scikit-learn, the one tie rule, zero-shot through the same
functions, retrieval against hand-computed values (distinct entries, any pair of modalities)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from multimodal.evaluation.metrics import (
    average_precision_at_k,
    chance_metrics,
    classification_metrics,
    confusion,
    improves,
    metric_bound,
    retrieval_metrics,
    saturation_warning,
    tie_broken_predictions,
)


@pytest.mark.parametrize("num_classes", [2, 5, 8])
def test_single_label_matches_sklearn(num_classes):
    rng = np.random.default_rng(num_classes)
    logits = rng.normal(size=(200, num_classes)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=200)
    logits[labels == 1, 1] += 1.0  # some signal
    out = classification_metrics(logits, labels, "single_label")
    pred = logits.argmax(-1)  # no ties in random floats: the tie rule changes nothing here
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert out["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert out["num_examples"] == 200 and out["num_classes"] == num_classes
    if num_classes == 2:
        prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        assert out["auroc"] == pytest.approx(skm.roc_auc_score(labels, prob[:, 1]))
    else:
        assert "auroc" not in out
    if num_classes > 5:
        assert out["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(labels, logits, k=5))


def test_ties_count_against_the_model_everywhere():
    logits = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    labels = np.array([0, 2, 0, 1])
    # row 0: true 0 tied with 1 -> predicted 1; row 1: true 2 tied with 1 -> 1; row 2: clear; row 3: tied with 0 -> 0
    assert tie_broken_predictions(logits, labels).tolist() == [1, 1, 0, 0]
    out = classification_metrics(logits, labels, "single_label")
    assert out["accuracy"] == pytest.approx(1 / 4)
    assert confusion(logits, labels) == [[1, 1, 0], [1, 0, 0], [0, 1, 0]]
    constant = classification_metrics(np.zeros((6, 3)), [0, 1, 2, 0, 1, 2], "single_label")
    assert constant["accuracy"] == 0.0  # a constant model never scores a lucky top-1


def test_macro_f1_averages_over_the_vocabulary():
    # perfect predictions, but class 2 of the vocabulary never occurs in this split
    logits = np.array([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0]])
    labels = np.array([0, 1, 0])
    out = classification_metrics(logits, labels, "single_label")
    assert out["accuracy"] == 1.0
    assert out["macro_f1"] == pytest.approx(skm.f1_score(labels, [0, 1, 0], labels=[0, 1, 2], average="macro",
                                                         zero_division=0))
    assert out["macro_f1"] == pytest.approx(2 / 3)


def test_multi_label_and_regression_match_sklearn():
    rng = np.random.default_rng(0)
    labels = (rng.random((150, 6)) < 0.3).astype(np.float32)
    logits = rng.normal(size=(150, 6)) + 2 * (labels - 0.5)
    out = classification_metrics(logits, labels, "multi_label")
    pred = (logits >= 0).astype(int)
    assert out["micro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="micro"))
    assert out["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro", zero_division=0))
    assert out["subset_accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    target = rng.normal(size=80)
    guess = target + rng.normal(scale=0.3, size=80)
    out = classification_metrics(guess[:, None], target, "regression")
    assert out["mse"] == pytest.approx(skm.mean_squared_error(target, guess))
    assert out["mae"] == pytest.approx(skm.mean_absolute_error(target, guess))
    assert out["r2"] == pytest.approx(skm.r2_score(target, guess))


def test_chance_is_majority_rate():
    train, test = np.array([0, 0, 0, 1, 2]), np.array([0, 1, 1, 2])
    # always class 0: F1 of class 0 = 2 * 0.25 / 1.25 = 0.4, of classes 1 and 2 zero -> macro 0.4 / 3
    assert chance_metrics(train, test, "single_label") == pytest.approx(
        {"majority_accuracy": 0.25, "majority_macro_f1": 0.4 / 3, "uniform_accuracy": 1 / 3})
    assert chance_metrics(train, test, "single_label")["majority_macro_f1"] == pytest.approx(
        skm.f1_score(test, np.zeros(4, int), labels=[0, 1, 2], average="macro", zero_division=0))


def test_ties_on_the_selection_metric_go_to_the_lower_loss():
    assert improves(0.9, 0.8, "max") and not improves(0.8, 0.9, "max") and improves(0.1, 0.2, "min")
    assert improves(0.5, None, "max") and not improves(float("nan"), None, "max") and not improves(None, 0.1, "max")
    assert not improves(1.0, 1.0, "max")  # a tie without losses keeps the earlier epoch
    assert improves(1.0, 1.0, "max", loss=0.02, best_loss=0.50)  # ... with a lower loss it is better
    assert not improves(1.0, 1.0, "max", loss=0.50, best_loss=0.02)
    assert not improves(1.0, 1.0, "max", loss=0.5, best_loss=0.5)  # equal on both: keep the earlier
    assert improves(3.0, 3.0, "min", loss=0.1, best_loss=float("nan"))  # a loss beats no usable loss
    assert not improves(1.0, 1.0, "max", loss=float("nan"), best_loss=0.3)
    assert not improves(0.9, 1.0, "max", loss=0.0, best_loss=9.0)  # the loss only breaks ties


def test_saturated_small_validation_set_is_flagged():
    assert metric_bound("macro_f1") == 1.0 and metric_bound("mse") == 0.0 and metric_bound("loss") is None
    assert metric_bound("text_to_image/R@5") == 1.0 and metric_bound("image_to_text/median_rank") == 1.0
    message = saturation_warning({"macro_f1": 1.0, "num_examples": 20}, "macro_f1")
    assert "validation macro_f1 is 1, its best possible value, on only 20 rows" in message
    assert "train.metric_for_best=loss" in message and "data.folds" in message
    assert saturation_warning({"macro_f1": 1.0, "num_examples": 50}, "macro_f1") is None  # enough rows
    assert saturation_warning({"macro_f1": 0.95, "num_examples": 20}, "macro_f1") is None  # room to improve
    assert saturation_warning({"mse": 0.0, "num_examples": 10}, "mse") is not None  # bounded below
    assert saturation_warning({"loss": 0.0, "num_examples": 10}, "loss") is None  # no bound: never saturated
    assert saturation_warning({"macro_f1": 1.0}, "macro_f1") is None  # row count unknown
    assert saturation_warning({"macro_f1": 1.0, "num_examples": 20}, "macro_f1", "max") is not None
    assert saturation_warning({"accuracy": 1.0, "num_examples": 6}, "accuracy", "min") is None  # minimised: the worst


# Retrieval: 5 captions, 3 images; captions 0,1 -> image 0; caption 2 -> image 1; captions 3,4 -> image 2.
SIM = np.array([
    [0.9, 0.1, 0.2],  # rank 1
    [0.3, 0.5, 0.3],  # image 0 at .3: image 1 ahead, image 2 tied -> pessimistic rank 3
    [0.2, 0.4, 0.4],  # image 1 at .4 tied with image 2 -> rank 2
    [0.1, 0.0, 0.8],  # rank 1
    [0.6, 0.7, 0.5],  # rank 3
])
PAIRS = [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2)]


def test_text_to_image_hand_computed():
    m = retrieval_metrics(SIM, PAIRS, names=("text", "image"), ks=(1, 2, 5))
    # ranks [1, 3, 2, 1, 3]
    assert m["text_to_image/R@1"] == pytest.approx(2 / 5)
    assert m["text_to_image/R@2"] == pytest.approx(3 / 5)
    assert m["text_to_image/R@5"] == pytest.approx(1.0)
    assert m["text_to_image/median_rank"] == 2.0 and m["text_to_image/mean_rank"] == pytest.approx(2.0)
    assert m["text_to_image/mAP@10"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 + 1 / 3) / 5)
    assert m["text_to_image/recall_curve"] == pytest.approx([0.4, 0.6, 1.0])
    assert m["chance/text_to_image/R@1"] == pytest.approx(1 / 3)
    assert m["num_text"] == 5 and m["num_image"] == 3


def test_image_to_text_any_caption_hand_computed():
    m = retrieval_metrics(SIM, PAIRS, names=("text", "image"), ks=(1, 2, 5))
    # image 0: best caption c0 (.9) rank 1; image 1: c2 (.4) behind c4 (.7), c1 (.5) -> 3; image 2: c3 (.8) rank 1
    assert m["image_to_text/R@1"] == pytest.approx(2 / 3)
    assert m["image_to_text/R@5"] == pytest.approx(1.0)
    assert m["image_to_text/median_rank"] == 1.0 and m["image_to_text/mean_rank"] == pytest.approx(5 / 3)
    # AP: image 0 ranked [c0 R, c4, c1 R, ...] -> (1 + 2/3) / 2; image 1 -> 1/3; image 2 [c3 R, c4 R] -> 1
    assert m["image_to_text/mAP@10"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3 + 1) / 3)
    assert m["rsum"] == pytest.approx(0.4 + 0.6 + 1.0 + 2 / 3 + 2 / 3 + 1.0)


def test_constant_similarity_is_pessimistic_not_lucky():
    m = retrieval_metrics(np.zeros((5, 3)), PAIRS, names=("text", "audio"))
    assert m["text_to_audio/R@1"] == 0.0 and m["text_to_audio/median_rank"] == 3.0
    # audio 0: 3 irrelevant captions ahead -> rank 4; audio 1: 4 -> 5; audio 2: 3 -> 4
    assert m["audio_to_text/mean_rank"] == pytest.approx(13 / 3) and m["audio_to_text/R@1"] == 0.0


def test_an_entry_with_several_partners_counts_each_as_relevant():
    # one caption shared by two clips (e.g. captions that are class names): 1 text entry, 2 relevant clips
    sim = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.7]])  # texts "dog", "cat" x 3 clips
    m = retrieval_metrics(sim, [(0, 0), (0, 1), (1, 2)], names=("text", "audio"), ks=(1,))
    assert m["audio_to_text/R@1"] == 1.0 and m["text_to_audio/R@1"] == 1.0
    assert m["text_to_audio/mAP@10"] == 1.0 and m["chance/text_to_audio/R@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_image_audio_names_and_bad_input():
    m = retrieval_metrics(np.eye(3), [(0, 0), (1, 1), (2, 2)], names=("audio", "image"))
    assert m["audio_to_image/R@1"] == 1.0 and m["image_to_audio/R@1"] == 1.0
    with pytest.raises(ValueError, match="index a \\[5, 3\\] similarity"):
        retrieval_metrics(SIM, [(0, 3)])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((5, 3), np.nan), PAIRS)
    with pytest.raises(ValueError, match="at least one matching pair"):
        retrieval_metrics(SIM, [])


def test_average_precision_ties_and_more_than_k_relevant():
    assert average_precision_at_k(torch.tensor([[0.5, 0.5, 0.5]]), torch.tensor([[False, True, False]]))[0] == pytest.approx(1 / 3)
    s = torch.arange(20, 0, -1).float().unsqueeze(0)
    rel = torch.zeros(1, 20, dtype=torch.bool)
    rel[0, :12] = True
    assert average_precision_at_k(s, rel, 10)[0] == pytest.approx(1.0)  # normalised by min(12, 10)
    rel2 = torch.zeros(1, 20, dtype=torch.bool)
    rel2[0, 10] = True
    assert average_precision_at_k(s, rel2, 10)[0] == 0.0
