"""What each metric key means, in plain words, for the reports (and anyone reading metrics.json)."""

from __future__ import annotations

import re
from typing import Optional

# key -> (short name, meaning). Keys with a retrieval direction prefix ("text_to_image/R@1") are matched on
# their last part, and the direction is put in front of the meaning.
METRICS: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy", "share of examples whose highest-scoring class is the true class; a tie with another "
                 "class counts as wrong (0-1, higher is better)"),
    "top5_accuracy": ("top-5 accuracy", "share of examples whose true class is among the 5 highest-scoring classes"),
    "macro_f1": ("macro-F1", "F1 (harmonic mean of precision and recall) of each class, averaged with equal weight "
                 "over every class of the label list, so rare classes count as much as common ones (0-1, higher "
                 "is better)"),
    "micro_f1": ("micro-F1", "F1 over all (example, label) decisions pooled, so frequent labels weigh more "
                 "(0-1, higher is better)"),
    "subset_accuracy": ("exact-match accuracy", "share of examples whose whole label set is predicted exactly"),
    "auroc": ("AUROC", "probability that a random positive example scores above a random negative one "
              "(0.5 = guessing, 1 = perfect ranking)"),
    "mse": ("MSE", "mean squared error of the predicted values (lower is better)"),
    "mae": ("MAE", "mean absolute error of the predicted values (lower is better)"),
    "r2": ("R²", "share of the target's variance the model explains (1 = perfect, 0 = as good as predicting the "
           "mean, below 0 = worse)"),
    "loss": ("loss", "the training objective on this split (cross-entropy, BCE, MSE or the contrastive loss); "
             "lower is better, and it also measures how confident correct predictions are"),
    "num_examples": ("examples", "examples scored (under multi-process evaluation, counted once each)"),
    "num_unique_examples": ("distinct rows", "distinct dataset rows among the scored examples; equal to the "
                            "number of examples unless a row was scored twice, a check on multi-process evaluation"),
    "num_classes": ("classes", "classes in the label list (the model's outputs)"),
    "majority_accuracy": ("majority-class accuracy", "accuracy of always answering the most frequent class of the "
                          "training split; it can be below the uniform guess when that class is rarer in this "
                          "split than in training"),
    "majority_macro_f1": ("majority-class macro-F1", "macro-F1 of always answering the most frequent training class"),
    "uniform_accuracy": ("uniform-guess accuracy", "expected accuracy of picking a class uniformly at random "
                         "(1 / number of classes)"),
    "prior_micro_f1": ("label-prior micro-F1", "micro-F1 of predicting every label that is on in at least half "
                       "of the training rows"),
    "prior_macro_f1": ("label-prior macro-F1", "macro-F1 of the same label-prior prediction"),
    "mean_mse": ("training-mean MSE", "MSE of always predicting the training split's mean value"),
    "mean_mae": ("training-mean MAE", "MAE of always predicting the training split's mean value"),
    "rsum": ("R-sum", "sum of every Recall@K in both directions (higher is better)"),
    "median_rank": ("median rank", "median position of the first correct match in the ranked gallery "
                    "(1 = always first; lower is better)"),
    "mean_rank": ("mean rank", "mean position of the first correct match (lower is better)"),
    "num_queries": ("queries", "distinct queries ranked in this direction"),
}
_PATTERNS = (
    (re.compile(r"^R@(\d+)$"), "Recall@{0}", "share of queries with a correct match among the top {0} results"),
    (re.compile(r"^mAP@(\d+)$"), "mAP@{0}", "mean average precision of the top {0} results, every paired entry "
                                           "counted as relevant"),
    (re.compile(r"^num_(\w+)$"), "{0}s", "distinct {0} entries on that side of the evaluation"),
)


def describe_metric(key: str) -> Optional[tuple[str, str]]:
    """(short name, plain-words meaning) of metric `key`, or None when it is not a known metric."""
    if key.startswith("chance/"):
        inner = describe_metric(key[len("chance/"):])
        return (f"chance {inner[0]}", f"what a random ranking scores: {inner[1]}") if inner else None
    direction, _, last = key.rpartition("/")
    found = METRICS.get(last)
    if found is None:
        for pattern, name, meaning in _PATTERNS:
            match = pattern.match(last)
            if match:
                found = (name.format(*match.groups()), meaning.format(*match.groups()))
                break
    if found is None:
        return None
    if direction:
        query, _, gallery = direction.partition("_to_")
        where = f"{query} → {gallery}" if gallery else direction
        return f"{where} {found[0]}", f"{query} queries against the {gallery} gallery: {found[1]}"
    return found


def metric_label(key: str) -> str:
    """The short plain name of metric `key` (the key itself when unknown)."""
    found = describe_metric(key)
    return found[0] if found else key
