"""What every deploy module shares: its errors, the exported folder's file names, and turning outputs into
predictions (numpy only, so PyTorch and ONNX Runtime results are formatted by the same code)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

DEPLOY_CONFIG = "deploy.json"  # the manifest of an exported folder (graphs, inputs, preprocessing, labels)
DEPLOY_FORMAT_VERSION = 1
FORMATS = ("onnx", "torch-export")
CLASSIFIER_TASKS = ("single_label", "multi_label", "regression")


class DeployError(ValueError):
    """A model folder, export or option cannot be used as given; the message says what to do instead."""


class BadInputError(DeployError):
    """One input row cannot be predicted; the message names the row and the field (and file, if any)."""

    def __init__(self, message: str, row: Optional[int] = None, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.row, self.field = row, field


def package_versions() -> dict[str, Optional[str]]:
    """Installed versions of this package and the runtimes a prediction may go through."""
    out: dict[str, Optional[str]] = {}
    for name in ("multimodal-finetune", "torch", "onnxruntime", "onnx", "transformers", "timm", "tokenizers", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


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


@contextlib.contextmanager
def staged_folder(output: str, prefix: str) -> Iterator[str]:
    """A temporary folder beside `output` to write an exported folder into; on success it replaces `output`
    (which must be absent or an exported folder), so a failed or killed export never leaves half a folder."""
    if os.path.exists(output) and not os.path.exists(os.path.join(output, DEPLOY_CONFIG)):
        raise DeployError(f"{output} exists and is not an exported folder; choose a new --output")
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
