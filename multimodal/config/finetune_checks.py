"""Deprecated: the fine-tuning checks moved to `multimodal.config.checks` (``check_finetune``, ``MIXABLE``)."""

from multimodal.config import checks
from multimodal.deprecation import moved

__getattr__ = moved(__name__, checks)
