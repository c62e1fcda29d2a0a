"""Deprecated: these checks moved to `multimodal.config.checks`, ``ADVERSARIAL_TARGETS`` to `multimodal.config.schema`."""

from multimodal.config import checks, schema
from multimodal.deprecation import moved

__getattr__ = moved(__name__, checks, {
    "ADVERSARIAL_TARGETS": (schema.ADVERSARIAL_TARGETS, "multimodal.config.schema.ADVERSARIAL_TARGETS"),
})
