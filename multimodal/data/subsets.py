"""Deprecated: K-shot subsets and cross-validation folds moved to `multimodal.data.splits`."""

from multimodal.data import splits
from multimodal.deprecation import moved

__getattr__ = moved(__name__, splits)
