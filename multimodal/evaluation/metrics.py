"""Every metric the tasks report: classification (scikit-learn), zero-shot (the same functions) and retrieval.

Conventions, the same everywhere:

* **Ties count against the model.** A class or gallery entry whose score equals the correct one's ranks
  ahead of it: a constant model scores the worst rank, never a lucky top-1. For classification the
  prediction of a row whose true class shares the top score with another class is that other class
  (the lowest such index), so accuracy equals pessimistic top-1 accuracy. (AUROC keeps its standard
  average-rank treatment of tied scores.)
* **Averages are over the label vocabulary**: macro-F1 averages every class of the vocabulary, also one
  absent from the evaluated split (scikit-learn's ``labels=`` with ``zero_division=0``).
* Keys are alike across tasks: ``accuracy``, ``top5_accuracy``, ``macro_f1``, ``micro_f1``, ``mse``,
  ``num_examples``, ``num_classes``; retrieval ``<query>_to_<gallery>/R@K``, ``median_rank``, ``mAP@10``.
* Retrieval: every distinct entry on each side is one query and one gallery entry (identical captions are
  one entry); a query is correct at K when any entry paired with it is in the top K; ranks are 1-based;
  mAP@10 counts every paired entry as relevant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch

_CHUNK = 1024


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _tensor(x: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Ranks


def pessimistic_ranks(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best relevant candidate per row, tied irrelevant candidates counted ahead.

    `scores` is ``[R, C]``, `relevant` a bool ``[R, C]`` with at least one True per row.
    """
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and relevant {tuple(relevant.shape)} differ in shape")
    if not bool(relevant.any(dim=1).all()):
        raise ValueError("every query needs at least one relevant candidate")
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype)
    best = torch.where(relevant, scores, neg_inf).max(dim=1, keepdim=True).values
    return ((scores >= best) & ~relevant).sum(dim=1) + 1


def tie_broken_predictions(scores: Any, labels: Any) -> np.ndarray:
    """Argmax predictions where a true class tied for the top score loses to the lowest-index tied other class."""
    s, y = _tensor(scores), _tensor(labels, torch.long).reshape(-1)
    top = s.max(dim=1, keepdim=True).values
    tied = s >= top  # [N, C]
    pred = tied.float().argmax(dim=1)  # lowest tied index
    others = tied.clone()
    others[torch.arange(len(y)), y] = False
    lose = tied[torch.arange(len(y)), y] & others.any(dim=1)
    pred = torch.where(lose, others.float().argmax(dim=1), pred)
    return pred.numpy()


def top_k_hits(scores: Any, labels: Any, k: int) -> np.ndarray:
    """Bool per row: the true class is within the top k, tied wrong classes counted ahead."""
    s, y = _tensor(scores), _tensor(labels, torch.long).reshape(-1)
    rel = torch.zeros_like(s, dtype=torch.bool)
    rel[torch.arange(s.shape[0]), y] = True
    return (pessimistic_ranks(s, rel) <= k).numpy()


# --------------------------------------------------------------------------------------------------
# Classification and regression


def classification_metrics(
    logits: Any,
    labels: Any,
    label_type: str = "single_label",
    class_names: Optional[Sequence[str]] = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Metrics of scores `[N, C]` against labels (see the module docstring for ties and averaging).

    single_label: accuracy, top5_accuracy (more than 5 classes), macro_f1, auroc (2 classes);
    multi_label: micro_f1, macro_f1, subset_accuracy (sigmoid >= `threshold`); regression: mse, mae, r2.
    """
    from sklearn.metrics import f1_score, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

    scores, y = _np(logits), _np(labels)
    out: dict[str, Any] = {"num_examples": int(len(y))}
    if label_type == "single_label":
        if scores.ndim != 2 or scores.shape[0] != len(y):
            raise ValueError(f"logits must be [N, C] with N = len(labels); got {scores.shape} and {len(y)}")
        n_classes = scores.shape[1]
        y = y.astype(np.int64).reshape(-1)
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"labels must lie in [0, {n_classes})")
        out["num_classes"] = int(n_classes)
        if not len(y):
            return out
        pred = tie_broken_predictions(scores, y)
        out["accuracy"] = float((pred == y).mean())
        if n_classes > 5:
            out["top5_accuracy"] = float(top_k_hits(scores, y, 5).mean())
        out["macro_f1"] = float(f1_score(y, pred, labels=list(range(n_classes)), average="macro", zero_division=0))
        if n_classes == 2:
            shifted = scores - scores.max(-1, keepdims=True)
            prob = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
            out["auroc"] = float(roc_auc_score(y, prob[:, 1])) if len(set(y.tolist())) == 2 else float("nan")
    elif label_type == "multi_label":
        pred = (1.0 / (1.0 + np.exp(-scores))) >= threshold
        truth = y.astype(bool)
        n_classes = truth.shape[1] if truth.ndim == 2 else 0
        out["num_classes"] = int(n_classes)
        if len(y):
            labels_range = list(range(n_classes))
            out["micro_f1"] = float(f1_score(truth, pred, labels=labels_range, average="micro", zero_division=0))
            out["macro_f1"] = float(f1_score(truth, pred, labels=labels_range, average="macro", zero_division=0))
            out["subset_accuracy"] = float((pred == truth).all(-1).mean())
    elif label_type == "regression":
        pred = scores.reshape(y.shape) if scores.size == y.size else scores
        if len(y):
            out["mse"] = float(mean_squared_error(y, pred))
            out["mae"] = float(mean_absolute_error(y, pred))
            out["r2"] = float(r2_score(y, pred)) if len(y) > 1 else float("nan")
    else:
        raise ValueError(f"classification_metrics: unknown label type {label_type!r}")
    if class_names is not None:
        out["class_names"] = list(class_names)
    return out


def confusion(logits: Any, labels: Any) -> list[list[int]]:
    """Confusion matrix (rows: true class, columns: predicted with the tie rule) over every class of `logits`."""
    from sklearn.metrics import confusion_matrix

    scores = _np(logits)
    y = _np(labels).astype(np.int64).reshape(-1)
    return confusion_matrix(y, tie_broken_predictions(scores, y), labels=list(range(scores.shape[1]))).tolist()


def chance_metrics(train_labels: Any, eval_labels: Any, label_type: str) -> dict[str, float]:
    """What a label-only predictor scores: the majority class (or prior, or mean) of the training labels."""
    train, ev = _np(train_labels), _np(eval_labels)
    if label_type == "single_label":
        from sklearn.metrics import f1_score

        values, counts = np.unique(train, return_counts=True)
        majority = values[counts.argmax()]
        classes = sorted(set(values.tolist()) | set(np.unique(ev).tolist()))
        constant = np.full(len(ev), majority)
        return {"majority_accuracy": float((ev == majority).mean()) if len(ev) else float("nan"),
                "majority_macro_f1": float(f1_score(ev, constant, labels=classes, average="macro", zero_division=0))
                if len(ev) else float("nan"),
                "uniform_accuracy": 1.0 / max(len(values), 1)}
    if label_type == "multi_label":
        from sklearn.metrics import f1_score

        prior = np.broadcast_to(train.mean(0) >= 0.5, ev.shape)
        return {"prior_micro_f1": float(f1_score(ev.astype(bool), prior, average="micro", zero_division=0)),
                "prior_macro_f1": float(f1_score(ev.astype(bool), prior, average="macro", zero_division=0))}
    if label_type == "regression":
        diff = ev - train.mean(0)
        return {"mean_mse": float(np.mean(diff**2)), "mean_mae": float(np.mean(np.abs(diff)))}
    return {}


CLASSIFICATION_METRICS = {
    "single_label": ("accuracy", "top5_accuracy", "macro_f1", "auroc"),
    "multi_label": ("micro_f1", "macro_f1", "subset_accuracy"),
    "regression": ("mse", "mae", "r2"),
}
LOWER_IS_BETTER = {"loss", "mse", "mae"}


def metric_mode(name: str) -> str:
    """'min' for losses and errors, 'max' for everything else."""
    return "min" if name in LOWER_IS_BETTER or name.endswith("median_rank") or name.endswith("mean_rank") else "max"


def improves(value: Optional[float], best: Optional[float], mode: str, loss: Optional[float] = None,
             best_loss: Optional[float] = None) -> bool:
    """Whether `value` beats `best` in direction `mode` ("max"/"min"): strictly, or by a tie with a strictly
    lower `loss` than `best_loss` (the validation losses, when given). A missing or NaN value never does, and
    anything beats no best yet (model selection in the Trainer and the probe's C sweep)."""
    if _missing(value):
        return False
    if best is None:
        return True
    if value != best:
        return value > best if mode == "max" else value < best
    return not _missing(loss) and (_missing(best_loss) or loss < best_loss)


def _missing(value: Optional[float]) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# Where a metric tops out: a validation value there cannot improve, so later epochs can only tie with it.
METRIC_BOUNDS = {"accuracy": 1.0, "top5_accuracy": 1.0, "macro_f1": 1.0, "micro_f1": 1.0, "subset_accuracy": 1.0,
                 "auroc": 1.0, "r2": 1.0, "rsum": None, "mse": 0.0, "mae": 0.0, "loss": None}
SATURATION_ROWS = 50


def metric_bound(name: str) -> Optional[float]:
    """The best value metric `name` can take (1.0 for accuracies, F1, AUROC and R@K; 0 for errors; 1 for ranks),
    or None when it has none (losses, rsum)."""
    if name in METRIC_BOUNDS:
        return METRIC_BOUNDS[name]
    last = name.rsplit("/", 1)[-1]
    if last.startswith(("R@", "mAP@")):
        return 1.0
    if last in ("median_rank", "mean_rank"):
        return 1.0
    return None


def saturation_warning(metrics: dict[str, Any], metric: str, mode: Optional[str] = None,
                       min_rows: int = SATURATION_ROWS) -> Optional[str]:
    """A warning when validation `metric` sits at its best possible value on fewer than `min_rows` examples
    (`metrics` as one epoch's validation metrics, with ``num_examples``): every later epoch can only tie, so the
    metric no longer tells models apart; None otherwise. A `mode` against the metric's natural direction (an
    accuracy minimised) has no such best value."""
    bound, value = metric_bound(metric), metrics.get(metric)
    rows = metrics.get("num_examples")
    if mode is not None and mode != metric_mode(metric):
        return None
    if bound is None or _missing(value) or rows is None or rows >= min_rows or abs(float(value) - bound) > 1e-12:
        return None
    return (f"validation {metric} is {value:g}, its best possible value, on only {rows} rows: later epochs can only "
            f"tie, so it cannot tell them apart (ties go to the lower validation loss). Prefer "
            f"train.metric_for_best=loss, a larger validation split (data.val_fraction), or cross-validation "
            f"(data.folds=5)")


# --------------------------------------------------------------------------------------------------
# Retrieval


def average_precision_at_k(scores: torch.Tensor, relevant: torch.Tensor, k: int = 10) -> torch.Tensor:
    """AP@k per row with the pessimistic tie order; normalised by ``min(#relevant, k)``."""
    relevant = relevant.bool()
    idx = np.lexsort((relevant.numpy().astype(np.int8), -scores.double().numpy()), axis=-1)
    ranked = torch.from_numpy(np.take_along_axis(relevant.numpy(), idx, axis=1))[:, :k].double()
    hits = ranked.cumsum(dim=1)
    positions = torch.arange(1, ranked.shape[1] + 1, dtype=torch.float64)
    n_rel = relevant.sum(dim=1).clamp(max=k).double()
    return ((hits / positions * ranked).sum(dim=1) / n_rel.clamp(min=1)).float()


def _direction(sim: torch.Tensor, pairs: torch.Tensor, ks: Sequence[int], prefix: str, map_k: int,
               curve_max: int) -> dict[str, Any]:
    """Metrics of rows of `sim` as queries; `pairs` [P, 2] holds (query, gallery) index pairs."""
    queries = torch.unique(pairs[:, 0])
    ranks, aps = [], []
    for start in range(0, queries.numel(), _CHUNK):
        block_q = queries[start : start + _CHUNK]
        block = sim[block_q]
        rel = torch.zeros_like(block, dtype=torch.bool)
        pos = torch.searchsorted(block_q, pairs[:, 0].contiguous())
        inside = (pos < block_q.numel()) & (block_q[pos.clamp(max=block_q.numel() - 1)] == pairs[:, 0])
        rel[pos[inside], pairs[inside, 1]] = True
        ranks.append(pessimistic_ranks(block, rel))
        aps.append(average_precision_at_k(block, rel, map_k))
    r = torch.cat(ranks)
    out: dict[str, Any] = {f"{prefix}/R@{k}": float((r <= k).double().mean()) for k in ks}
    out[f"{prefix}/median_rank"] = float(np.median(r.numpy()))
    out[f"{prefix}/mean_rank"] = float(r.double().mean())
    out[f"{prefix}/mAP@{map_k}"] = float(torch.cat(aps).double().mean())
    out[f"{prefix}/recall_curve"] = [float((r <= k).double().mean()) for k in range(1, min(curve_max, sim.shape[1]) + 1)]
    out[f"{prefix}/num_queries"] = int(r.numel())
    relevant_per_query = torch.bincount(pairs[:, 0], minlength=sim.shape[0])[queries].double()
    out[f"chance/{prefix}/R@1"] = float((relevant_per_query / sim.shape[1]).clamp(max=1).mean())
    return out


def retrieval_metrics(
    similarity: Any,
    pairs: Any,
    names: tuple[str, str] = ("text", "item"),
    ks: Sequence[int] = (1, 5, 10),
    map_k: int = 10,
    curve_max: int = 20,
) -> dict[str, Any]:
    """Recall@K, median/mean rank and mAP@k in both directions for a ``[A, B]`` similarity of distinct entries.

    `pairs` lists the matching (a, b) index pairs (each a caption and its image, say). Keys look like
    ``text_to_image/R@1`` and ``image_to_text/mAP@10`` for ``names=("text", "image")``; also ``rsum`` (sum of
    every R@K), ``num_<a>``, ``num_<b>`` and per-direction chance R@1 and recall curves (K = 1..curve_max).
    """
    sim = _tensor(similarity)
    if sim.dim() != 2 or 0 in sim.shape:
        raise ValueError(f"similarity must be a non-empty 2-D [A, B] matrix, got shape {tuple(sim.shape)}")
    if not torch.isfinite(sim).all():
        raise ValueError("similarity contains NaN or inf")
    p = _tensor(pairs, torch.long).reshape(-1, 2)
    if p.numel() == 0:
        raise ValueError("retrieval needs at least one matching pair")
    if int(p[:, 0].min()) < 0 or int(p[:, 0].max()) >= sim.shape[0] or int(p[:, 1].min()) < 0 or int(p[:, 1].max()) >= sim.shape[1]:
        raise ValueError(f"pairs must index a [{sim.shape[0]}, {sim.shape[1]}] similarity")
    p = torch.unique(p, dim=0)
    a, b = names
    metrics: dict[str, Any] = {}
    metrics.update(_direction(sim, p, ks, f"{a}_to_{b}", map_k, curve_max))
    metrics.update(_direction(sim.t().contiguous(), p.flip(1), ks, f"{b}_to_{a}", map_k, curve_max))
    metrics["rsum"] = float(sum(metrics[f"{d}/R@{k}"] for d in (f"{a}_to_{b}", f"{b}_to_{a}") for k in ks))
    metrics[f"num_{a}"], metrics[f"num_{b}"] = int(sim.shape[0]), int(sim.shape[1])
    return metrics


def retrieval_metric_names(a: str, b: str, ks: Sequence[int] = (1, 5, 10), map_k: int = 10) -> set[str]:
    """The scalar metric keys `retrieval_metrics` produces for modalities `a` and `b`."""
    names = {"rsum", "loss"}
    for d in (f"{a}_to_{b}", f"{b}_to_{a}"):
        names |= {f"{d}/R@{k}" for k in ks} | {f"{d}/median_rank", f"{d}/mean_rank", f"{d}/mAP@{map_k}"}
    return names
