"""Pluggable text, image and audio encoders behind one factory and an open registry of kinds.

The public names below load on first use (PEP 562), and using any of them first loads `encoders.factory`,
which registers the built-in kinds. So ``import encoders.samples`` (numpy and Pillow only, shared with the
exported-model runtime) does not import torch, while ``from encoders import create_encoder`` works as always.
"""

from importlib import import_module
from importlib.util import find_spec
from typing import Any

_EXPORTS = {
    "Encoder": "encoders.base",
    "EncoderError": "encoders.base",
    "EncoderInfo": "encoders.base",
    "EncoderOutput": "encoders.base",
    "Preprocessor": "encoders.base",
    "create_encoder": "encoders.factory",
    "encoder_from_config": "encoders.factory",
    "get_encoder_class": "encoders.registry",
    "jsonable": "encoders.base",
    "list_encoders": "encoders.registry",
    "masked_mean": "encoders.base",
    "parse_spec": "encoders.factory",
    "register_encoder": "encoders.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load a public name (or a submodule, ``encoders.image``) on first use, after the built-in kinds."""
    if name in _EXPORTS:
        import_module("encoders.factory")  # the built-in kinds are registered before any name is used
        value = getattr(import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and find_spec(f"encoders.{name}") is not None:
        value = import_module(f"encoders.{name}")
    else:
        raise AttributeError(f"module 'encoders' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
