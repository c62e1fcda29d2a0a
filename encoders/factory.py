"""The single entry point: `create_encoder("kind:name", pretrained, **kwargs)`, plus rebuilding from a config.

The built-in kinds are registered here, in `list_encoders()` order, through the same `register_encoder`
that user code calls; every function below reads that one registry.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

from encoders.audio import HFAudioEncoder
from encoders.audio_mel import MelAudioEncoder
from encoders.base import Encoder, EncoderError
from encoders.image import ImageEncoder
from encoders.registry import (
    ENCODERS,
    UnknownEncoderError,
    get_encoder_class,
    is_registered,
    known_kinds,
    list_encoders,
    register_encoder,
)
from encoders.text import TextEncoder

__all__ = ["create_encoder", "encoder_from_config", "list_encoders", "parse_spec"]

register_encoder(
    "text",
    TextEncoder,
    description="transformers AutoModel + AutoTokenizer; pooling 'mean' (mask-aware) or 'cls'; kwargs pooling, max_length",
    example="text:sentence-transformers/all-MiniLM-L6-v2",
)
register_encoder(
    "image",
    ImageEncoder,
    description="timm backbone (num_classes=0) with timm train/eval transforms; a timm name, 'hf-hub:<repo>', "
    "a local checkpoint file or a timm-style directory",
    example="image:tf_efficientnet_lite0",
)
register_encoder(
    "audio",
    HFAudioEncoder,
    description="transformers audio model (wav2vec2, HuBERT, WavLM, Whisper encoder, AST) + its feature extractor",
    example="audio:facebook/wav2vec2-base",
)
register_encoder(
    "audio-mel",
    MelAudioEncoder,
    description="log-mel spectrogram (computed in forward) into a 1-channel timm backbone; kwargs sample_rate, "
    "n_mels, max_seconds",
    example="audio-mel:tf_efficientnet_lite0",
)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split 'kind:name' (the name may itself contain ':') and check the kind is registered."""
    if not isinstance(spec, str) or ":" not in spec:
        raise EncoderError(f"encoder spec must look like 'kind:name' with kind in {known_kinds()}; got {spec!r}")
    kind, name = spec.split(":", 1)
    kind = kind.strip().lower()
    if not is_registered(kind):
        unknown = ENCODERS.unknown(kind)
        raise UnknownEncoderError(f"{unknown} (in spec {spec!r})", kind, unknown.known)
    if not name.strip():
        raise EncoderError(f"encoder spec {spec!r} names no model")
    return kind, name.strip()


def create_encoder(spec: str, pretrained: bool = True, **kwargs: Any) -> Encoder:
    """Build an encoder from a spec string such as 'text:<hub id or dir>' or 'image:<timm name or file>'."""
    kind, name = parse_spec(spec)
    cls = get_encoder_class(kind)
    try:
        return cls.create(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc) and "create()" in str(exc):
            raise EncoderError(f"{spec}: {exc}") from exc
        raise


def encoder_from_config(config: dict[str, Any], assets_dir: Optional[str] = None, trust_remote_code: bool = False) -> Encoder:
    """Rebuild an encoder's architecture (random weights, no network) from `get_config()` + `save_assets` files.

    Code shipped in `assets_dir` (a transformers ``auto_map``) runs only when the caller passes
    ``trust_remote_code=True`` here; a ``trust_remote_code`` value stored in `config` is ignored.
    """
    kind = config.get("kind") if isinstance(config, dict) else None
    if not is_registered(kind):
        raise UnknownEncoderError(
            f"encoder config has unknown kind {kind!r}; expected one of {known_kinds()} "
            "(a user-defined kind must be registered, i.e. its module imported, before loading)", kind, known_kinds()
        )
    from_config = get_encoder_class(kind).from_config
    params = inspect.signature(from_config).parameters
    if "trust_remote_code" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return from_config(config, assets_dir, trust_remote_code=bool(trust_remote_code))
    return from_config(config, assets_dir)  # a kind that never loads code from its folder
