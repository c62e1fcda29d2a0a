"""Metrics (classification, zero-shot, retrieval), reports and plots; the evaluate CLI is `multimodal.evaluation.cli`."""

from multimodal.evaluation.metrics import (
    chance_metrics,
    classification_metrics,
    confusion,
    pessimistic_ranks,
    retrieval_metrics,
    tie_broken_predictions,
    top_k_hits,
)
from multimodal.evaluation.report import EvalResult, RetrievalExamples, write_report, write_result

__all__ = [
    "EvalResult",
    "RetrievalExamples",
    "chance_metrics",
    "classification_metrics",
    "confusion",
    "pessimistic_ranks",
    "retrieval_metrics",
    "tie_broken_predictions",
    "top_k_hits",
    "write_report",
    "write_result",
]
