"""Deprecated: the fine-tuning methods moved to `multimodal.training.methods` (set-up, fit, WiSE-FT)."""

from multimodal.deprecation import moved
from multimodal.training import methods

__getattr__ = moved(__name__, methods)
