"""Shipping a trained model: the `Predictor`, export (ONNX / torch.export), int8 quantization, pruning, and the
CLIs ``multimodal-predict``, ``multimodal-export``, ``multimodal-quantize``, ``multimodal-prune`` and
``multimodal-serve``. The exported-model runtime, `multimodal.deploy.runtime`, imports no torch; so that it
can be imported alone, `Predictor` and `Gallery` load on first use. ONNX Runtime and FastAPI are imported
only by the modules that need them."""

from importlib import import_module
from typing import Any

from multimodal.deploy.errors import BadInputError, DeployError

_LAZY = {"Gallery": "multimodal.deploy.predictor", "Predictor": "multimodal.deploy.predictor"}

__all__ = ["BadInputError", "DeployError", "Gallery", "Predictor"]


def __getattr__(name: str) -> Any:
    """`Predictor` and `Gallery` (they import torch for PyTorch model folders) on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'multimodal.deploy' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
