"""Deprecated: moved to `multimodal.errors` (which errors are the user's and how the CLIs report them)."""

from multimodal import errors
from multimodal.deprecation import moved

__getattr__ = moved(__name__, errors)
