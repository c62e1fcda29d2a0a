"""Deprecated: moved to `multimodal.regimes.federated`."""

from multimodal.deprecation import moved
from multimodal.regimes import federated

__getattr__ = moved(__name__, federated)
