"""Pluggable text, image and audio encoders behind one factory and an open registry of kinds."""

from encoders.base import (
    Encoder,
    EncoderError,
    EncoderInfo,
    EncoderOutput,
    Preprocessor,
    jsonable,
    masked_mean,
)
from encoders.factory import create_encoder, encoder_from_config, parse_spec
from encoders.registry import get_encoder_class, list_encoders, register_encoder

__all__ = [
    "Encoder",
    "EncoderError",
    "EncoderInfo",
    "EncoderOutput",
    "Preprocessor",
    "create_encoder",
    "encoder_from_config",
    "get_encoder_class",
    "jsonable",
    "list_encoders",
    "masked_mean",
    "parse_spec",
    "register_encoder",
]
