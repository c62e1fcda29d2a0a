"""Fusion heads that combine encoder outputs, and the contrastive dual-encoder head."""

from .attention import AttentionFusion
from .base import Fusion, Presence
from .concat import ConcatFusion
from .contrastive import ContrastiveFusion
from .film import FiLMFusion
from .gated import GatedFusion
from .late import LateFusion
from .losses import ClipLoss, clip_loss, gather_features
from .lowrank import LowRankTensorFusion
from .registry import FusionInfo, create_fusion, fusion_from_config, list_fusions, register_fusion

__all__ = [
    "AttentionFusion",
    "ClipLoss",
    "ConcatFusion",
    "ContrastiveFusion",
    "FiLMFusion",
    "Fusion",
    "FusionInfo",
    "GatedFusion",
    "LateFusion",
    "LowRankTensorFusion",
    "Presence",
    "clip_loss",
    "create_fusion",
    "fusion_from_config",
    "gather_features",
    "list_fusions",
    "register_fusion",
]
