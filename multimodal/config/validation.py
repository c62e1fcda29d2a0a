"""Deprecated: the range and cross-field checks moved to `multimodal.config.checks`, the ranges themselves onto
the schema's fields (`multimodal.config.schema`, ``ranged(default, Range(...))``)."""

from multimodal.config import checks, schema
from multimodal.deprecation import moved

_FORWARDED_TO_SCHEMA = ("FRACTION", "NON_NEGATIVE", "POSITIVE", "Range", "SEED", "SEED_MAX", "WIDTH", "WIDTH_MAX", "short")


def _ranges() -> dict:
    return {key: allowed for key, _, allowed in checks.numeric_fields(schema.ExperimentConfig) if allowed is not None}


__getattr__ = moved(__name__, checks, {
    **{name: (getattr(schema, name), f"multimodal.config.schema.{name}") for name in _FORWARDED_TO_SCHEMA},
    "RANGES": (_ranges(), "the field metadata of multimodal.config.schema (checks.numeric_fields lists it)"),
})
