"""The PyTorch backend of the `Predictor`: a model folder loaded with `load_model`, fed by the encoders' own eval
preprocessors (the ones training and evaluation use), with the same interface as `ExportedModel`."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from multimodal.cache.modes import channels_last_inputs, is_convolutional
from multimodal.data.batches import to_device
from multimodal.deploy.errors import DeployError
from multimodal.models.base import EncoderModel
from multimodal.models.dual import DualEncoder
from multimodal.models.fused import MultimodalModel


class TorchBackend:
    """`preprocess`, `logits` and `embed` over a PyTorch model (no accelerate; `torch.inference_mode`). With
    `channels_last`, a convolutional model is converted to that layout (equal to NCHW within float rounding, faster):
    only for a model the backend owns, since a model in that layout cannot be saved with safetensors."""

    def __init__(self, model: EncoderModel, labels: Optional[list[str]] = None, device: str = "cpu",
                 channels_last: bool = False) -> None:
        if not isinstance(model, (MultimodalModel, DualEncoder)):
            raise DeployError(f"the Predictor knows MultimodalModel and DualEncoder, not {type(model).__name__}")
        if isinstance(model, MultimodalModel) and model.head is None:
            raise DeployError("the model has no task head: nothing to predict")
        self.model = model.eval().to(device)
        if channels_last and is_convolutional(self.model):
            self.model.to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.modalities: list[str] = model.modalities
        self.model_type: str = model.model_type
        self.task: str = model.head.label_type if isinstance(model, MultimodalModel) else "retrieval"
        self.labels = labels
        self.preprocessors = model.get_preprocessors(train=False)

    def preprocess(self, modality: str, samples: list) -> dict[str, torch.Tensor]:
        """One modality's raw samples (None for absent ones) -> the encoder's input tensors."""
        return self.preprocessors[modality](samples)

    @torch.inference_mode()
    def logits(self, inputs: dict[str, dict[str, torch.Tensor]], present: dict[str, Any]) -> np.ndarray:
        """Fused classifier: logits [B, C]."""
        present = {m: torch.as_tensor(np.asarray(p, dtype=bool)) for m, p in present.items()}
        inputs = {m: channels_last_inputs(x) for m, x in to_device(inputs, self.device).items()}
        out = self.model(inputs=inputs, present=to_device(present, self.device))
        return out.logits.float().cpu().numpy()

    @torch.inference_mode()
    def embed(self, modality: str, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        """Two-tower model: normalised embeddings [B, D] of one modality."""
        if not isinstance(self.model, DualEncoder):
            raise DeployError("embeddings come from two-tower models; this is a fused classifier")
        return self.model.encode(modality, channels_last_inputs(to_device(inputs, self.device))).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """What `/metadata` and the predict CLI report about this backend."""
        return {"backend": "pytorch", "format": "pytorch", "device": str(self.device), "quantization": None}
