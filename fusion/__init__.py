"""Fusion heads that combine encoder outputs into one vector, and the registry that names them.

The two-tower contrastive head and its loss moved to `multimodal.models.contrastive` (they are not fusions);
their old names here still work for one release, with a DeprecationWarning.
"""

from typing import Any

from encoders.registry import Registry, UnknownNameError

from ._moved import moved
from .attention import AttentionFusion
from .base import Features, Fusion, Presence, as_encoder_output
from .concat import ConcatFusion
from .film import FiLMFusion
from .gated import GatedFusion
from .late import LateFusion
from .lowrank import LowRankTensorFusion
from .registry import (
    FUSIONS,
    FusionInfo,
    UnknownFusionError,
    create_fusion,
    fusion_from_config,
    get_fusion_class,
    list_fusions,
    register_fusion,
)
from .standardized import StandardizedConcat

__all__ = [
    "FUSIONS",
    "AttentionFusion",
    "ConcatFusion",
    "FiLMFusion",
    "Features",
    "Fusion",
    "FusionInfo",
    "GatedFusion",
    "LateFusion",
    "LowRankTensorFusion",
    "Presence",
    "Registry",
    "StandardizedConcat",
    "UnknownFusionError",
    "UnknownNameError",
    "as_encoder_output",
    "create_fusion",
    "fusion_from_config",
    "get_fusion_class",
    "list_fusions",
    "register_fusion",
]


def __getattr__(name: str) -> Any:
    """Old names of the contrastive head and loss (moved to multimodal.models.contrastive), with a warning."""
    return moved(__name__, name)
