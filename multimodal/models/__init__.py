"""Models: the fused classifier (`MultimodalModel`), the two-tower `DualEncoder`, task heads, save/load."""

from multimodal.models.base import (
    EncoderModel,
    ModelFolderError,
    ModelOutput,
    load_model,
    load_weights,
    read_model_config,
    register_model_type,
)
from multimodal.models.dual import DualEncoder
from multimodal.models.fused import MultimodalModel
from multimodal.models.heads import TaskHead
from multimodal.models.multitask import MultiTaskHead, MultiTaskModel
from multimodal.models.prompt import PromptClassifier, PromptHead

__all__ = [
    "DualEncoder",
    "EncoderModel",
    "ModelFolderError",
    "ModelOutput",
    "MultiTaskHead",
    "MultiTaskModel",
    "MultimodalModel",
    "PromptClassifier",
    "PromptHead",
    "TaskHead",
    "load_model",
    "load_weights",
    "read_model_config",
    "register_model_type",
]
