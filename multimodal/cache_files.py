"""Deprecated: the feature cache's files moved to `multimodal.cache.files`."""

from multimodal.cache import files
from multimodal.deprecation import moved

__getattr__ = moved(__name__, files)
