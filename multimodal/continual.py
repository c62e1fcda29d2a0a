"""Deprecated: moved to `multimodal.regimes.continual`."""

from multimodal.deprecation import moved
from multimodal.regimes import continual

__getattr__ = moved(__name__, continual)
