"""Shipping a trained model: the `Predictor`, export (ONNX / torch.export), int8 quantization, pruning, and the
CLIs ``multimodal-predict``, ``multimodal-export``, ``multimodal-quantize``, ``multimodal-prune`` and
``multimodal-serve``. ONNX Runtime and FastAPI are imported only by the functions that need them."""

from multimodal.deploy.common import BadInputError, DeployError
from multimodal.deploy.predictor import Gallery, Predictor

__all__ = ["BadInputError", "DeployError", "Gallery", "Predictor"]
