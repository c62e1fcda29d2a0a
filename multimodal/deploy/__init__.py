"""Shipping a trained model: the `Predictor`, export (ONNX / torch.export), int8 quantization, pruning, and the
CLIs ``multimodal-predict``, ``multimodal-export``, ``multimodal-quantize``, ``multimodal-prune`` and
``multimodal-serve``. The exported-model runtime, `multimodal.deploy.runtime`, imports no torch; so that it
can be imported alone, `Predictor` and `Gallery` load on first use. ONNX Runtime and FastAPI are imported
only by the modules that need them."""

from encoders._lazy import lazy_exports
from multimodal.deploy.errors import BadInputError, DeployError

_LAZY = {"Gallery": "multimodal.deploy.predictor", "Predictor": "multimodal.deploy.predictor"}

__all__ = ["BadInputError", "DeployError", "Gallery", "Predictor"]


# `Predictor` and `Gallery` import torch (for PyTorch model folders): they load on first use.
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
