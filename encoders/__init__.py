"""Pluggable text, image and audio encoders behind one factory."""

from encoders.base import Encoder, EncoderError, EncoderInfo, EncoderOutput, Preprocessor
from encoders.factory import create_encoder, encoder_from_config, list_encoders, parse_spec

__all__ = [
    "Encoder",
    "EncoderError",
    "EncoderInfo",
    "EncoderOutput",
    "Preprocessor",
    "create_encoder",
    "encoder_from_config",
    "list_encoders",
    "parse_spec",
]
