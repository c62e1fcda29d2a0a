"""Models: the fused classifier (`MultimodalModel`), the two-tower `DualEncoder` with its contrastive head and
loss, task heads, one-call factories and presets, save/load."""

from multimodal.models.base import (
    MODEL_TYPES,
    EncoderModel,
    ModelFolderError,
    list_model_types,
    load_model,
    load_weights,
    read_model_config,
    register_model_type,
)
from multimodal.models.contrastive import ClipLoss, ContrastiveHead, clip_loss, gather_features
from multimodal.models.dual import DualEncoder
from multimodal.models.factories import create_dual_encoder, create_model, get_preset, list_presets
from multimodal.models.fused import MultimodalModel
from multimodal.models.heads import LABEL_TYPES, TaskHead
from multimodal.models.multitask import MultiTaskHead, MultiTaskModel
from multimodal.models.output import ModelOutput
from multimodal.models.prompt import PromptClassifier, PromptHead

__all__ = [
    "LABEL_TYPES",
    "MODEL_TYPES",
    "ClipLoss",
    "ContrastiveHead",
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
    "clip_loss",
    "create_dual_encoder",
    "create_model",
    "gather_features",
    "get_preset",
    "list_model_types",
    "list_presets",
    "load_model",
    "load_weights",
    "read_model_config",
    "register_model_type",
]
