"""Classification and regression metrics on gathered logits/labels (numpy, no host syncs inside loops)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Fraction of exact matches."""
    pred, target = _np(pred), _np(target)
    return float((pred == target).mean()) if len(target) else float("nan")


def f1_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class F1 for single-label predictions (0 where a class has no support and no predictions)."""
    pred, target = _np(pred).astype(int), _np(target).astype(int)
    f1 = np.zeros(num_classes)
    for c in range(num_classes):
        tp = np.sum((pred == c) & (target == c))
        fp = np.sum((pred == c) & (target != c))
        fn = np.sum((pred != c) & (target == c))
        denom = 2 * tp + fp + fn
        f1[c] = 2 * tp / denom if denom else 0.0
    return f1


def macro_f1(pred: np.ndarray, target: np.ndarray, num_classes: Optional[int] = None) -> float:
    """Unweighted mean F1 over the classes seen in either predictions or targets (sklearn's convention)."""
    pred, target = _np(pred).astype(int), _np(target).astype(int)
    labels = np.union1d(pred, target)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 0
    f1 = f1_per_class(pred, target, num_classes)
    return float(f1[labels].mean()) if len(labels) else float("nan")


def binary_auroc(scores: np.ndarray, target: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); nan if one class is absent."""
    scores, target = _np(scores).astype(np.float64), _np(target).astype(int)
    pos, neg = int((target == 1).sum()), int((target == 0).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_sum = ranks[target == 1].sum()
    return float((rank_sum - pos * (pos + 1) / 2.0) / (pos * neg))


def multilabel_f1(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(micro-F1, macro-F1) for 0/1 matrices [N, C]; macro averages every class column."""
    pred, target = _np(pred).astype(bool), _np(target).astype(bool)
    tp = (pred & target).sum(0).astype(np.float64)
    fp = (pred & ~target).sum(0).astype(np.float64)
    fn = (~pred & target).sum(0).astype(np.float64)
    denom = 2 * tp + fp + fn
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    micro_denom = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / micro_denom) if micro_denom else 0.0
    return micro, float(per_class.mean()) if len(per_class) else float("nan")


def compute_metrics(logits, labels, task: str, threshold: float = 0.5) -> dict[str, float]:
    """Metrics for a task: single_label -> accuracy, macro_f1 (+auroc if binary); multi_label ->
    micro_f1, macro_f1, subset_accuracy; regression -> mse, mae."""
    logits, labels = _np(logits), _np(labels)
    out: dict[str, float] = {"num_examples": int(len(labels))}
    if task == "single_label":
        num_classes = logits.shape[-1]
        pred = logits.argmax(-1)
        out["accuracy"] = accuracy(pred, labels)
        out["macro_f1"] = macro_f1(pred, labels, num_classes)
        if num_classes == 2:
            shifted = logits - logits.max(-1, keepdims=True)
            prob = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
            out["auroc"] = binary_auroc(prob[:, 1], labels)
    elif task == "multi_label":
        prob = 1.0 / (1.0 + np.exp(-logits))
        pred = prob >= threshold
        micro, macro = multilabel_f1(pred, labels)
        out["micro_f1"], out["macro_f1"] = micro, macro
        out["subset_accuracy"] = float((pred == labels.astype(bool)).all(-1).mean()) if len(labels) else float("nan")
    elif task == "regression":
        pred = logits.reshape(labels.shape) if logits.size == labels.size else logits
        diff = pred.astype(np.float64) - labels.astype(np.float64)
        out["mse"] = float(np.mean(diff**2)) if diff.size else float("nan")
        out["mae"] = float(np.mean(np.abs(diff))) if diff.size else float("nan")
    else:
        raise ValueError(f"compute_metrics: unknown task {task!r}")
    return out


def chance_metrics(train_labels, eval_labels, task: str) -> dict[str, float]:
    """What a label-only predictor scores: majority-class (or mean) prediction from the training labels."""
    train_labels, eval_labels = _np(train_labels), _np(eval_labels)
    if task == "single_label":
        values, counts = np.unique(train_labels, return_counts=True)
        majority = values[counts.argmax()]
        return {
            "majority_accuracy": accuracy(np.full_like(eval_labels, majority), eval_labels),
            "uniform_accuracy": 1.0 / max(len(values), 1),
        }
    if task == "multi_label":
        prior = train_labels.mean(0) >= 0.5
        pred = np.broadcast_to(prior, eval_labels.shape)
        micro, macro = multilabel_f1(pred, eval_labels)
        return {"prior_micro_f1": micro, "prior_macro_f1": macro}
    if task == "regression":
        mean = train_labels.mean(0)
        diff = eval_labels - mean
        return {"mean_mse": float(np.mean(diff**2)), "mean_mae": float(np.mean(np.abs(diff)))}
    return {}


def default_metric(task: str) -> tuple[str, str]:
    """(metric name, mode) used for model selection when the config says "auto"."""
    return {
        "single_label": ("macro_f1", "max"),
        "multi_label": ("micro_f1", "max"),
        "regression": ("mse", "min"),
    }.get(task, ("loss", "min"))
