"""Fusion heads that combine encoder outputs, and the contrastive head of two-tower models."""

from .attention import AttentionFusion
from .base import Features, Fusion, Presence, as_encoder_output
from .concat import ConcatFusion
from .contrastive import ContrastiveHead
from .film import FiLMFusion
from .gated import GatedFusion
from .late import LateFusion
from .losses import ClipLoss, clip_loss, gather_features
from .lowrank import LowRankTensorFusion
from .registry import (
    FusionInfo,
    create_fusion,
    fusion_from_config,
    get_fusion_class,
    list_fusions,
    register_fusion,
)
from .standardized import StandardizedConcat

__all__ = [
    "AttentionFusion",
    "ClipLoss",
    "ConcatFusion",
    "ContrastiveHead",
    "FiLMFusion",
    "Features",
    "Fusion",
    "FusionInfo",
    "GatedFusion",
    "LateFusion",
    "LowRankTensorFusion",
    "Presence",
    "StandardizedConcat",
    "as_encoder_output",
    "clip_loss",
    "create_fusion",
    "fusion_from_config",
    "gather_features",
    "get_fusion_class",
    "list_fusions",
    "register_fusion",
]
