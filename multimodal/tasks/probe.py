"""Deprecated: the linear probe moved to `multimodal.training.probe`."""

from multimodal.deprecation import moved
from multimodal.training import probe

__getattr__ = moved(__name__, probe)
