"""Pluggable text, image and audio encoders behind one factory and an open registry of kinds.

The public names below load on first use (PEP 562), and using any of them first loads `encoders.factory`,
which registers the built-in kinds. So ``import encoders.samples`` (numpy and Pillow only, shared with the
exported-model runtime) does not import torch, while ``from encoders import create_encoder`` works as always.
"""

from encoders._lazy import lazy_exports

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


# encoders.factory registers the built-in kinds before any public name is used.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), first="encoders.factory")
