"""Deprecated: the contrastive loss moved to `multimodal.models.contrastive`, beside the two-tower head."""

from typing import Any

from ._moved import moved


def __getattr__(name: str) -> Any:
    return moved(__name__, name)
