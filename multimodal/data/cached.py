"""Deprecated: the feature cache's datasets and collator moved to `multimodal.cache` (`multimodal.cache.datasets`)."""

from multimodal.cache import datasets
from multimodal.deprecation import moved

__getattr__ = moved(__name__, datasets)
