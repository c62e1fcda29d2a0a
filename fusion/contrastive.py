"""Deprecated: the contrastive head moved to `multimodal.models.contrastive` (it is not a fusion)."""

from typing import Any

from ._moved import moved


def __getattr__(name: str) -> Any:
    return moved(__name__, name)
