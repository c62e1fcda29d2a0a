"""Deprecated: moved to `multimodal.regimes.federated_app`."""

from multimodal.deprecation import moved
from multimodal.regimes import federated_app

__getattr__ = moved(__name__, federated_app)
