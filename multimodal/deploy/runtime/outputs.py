"""Model outputs -> predictions (numpy only, so PyTorch and ONNX Runtime results are formatted by the same code)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from multimodal.deploy.errors import DeployError

CLASSIFIER_TASKS = ("single_label", "multi_label", "regression")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function."""
    return 1.0 / (1.0 + np.exp(-logits))


def label_names(labels: Optional[list[str]], width: int) -> list[str]:
    """The saved label names, or "0".."width-1" when the model folder has none."""
    if labels is None:
        return [str(i) for i in range(width)]
    if len(labels) != width:
        raise DeployError(f"labels.json has {len(labels)} labels but the model has {width} outputs")
    return list(labels)


def format_logits(logits: np.ndarray, task: str, labels: Optional[list[str]], threshold: float = 0.5) -> list[dict]:
    """One prediction dict per row of `logits` [N, C]: the label and class probabilities (single-label), the labels
    above `threshold` (multi-label) or the predicted values (regression)."""
    logits = np.asarray(logits, dtype=np.float64)
    names = label_names(labels, logits.shape[-1])
    out: list[dict[str, Any]] = []
    if task == "single_label":
        probs = softmax(logits)
        for row in probs:
            best = int(np.argmax(row))
            out.append({"label": names[best], "score": float(row[best]),
                        "probabilities": {n: float(p) for n, p in zip(names, row)}})
    elif task == "multi_label":
        probs = sigmoid(logits)
        for row in probs:
            out.append({"labels": [n for n, p in zip(names, row) if p >= threshold],
                        "probabilities": {n: float(p) for n, p in zip(names, row)}})
    elif task == "regression":
        for row in logits:
            out.append({"value": float(row[0])} if len(row) == 1 else {"values": {n: float(v) for n, v in zip(names, row)}})
    else:
        raise DeployError(f"cannot format outputs of task {task!r}; expected one of {CLASSIFIER_TASKS}")
    return out
