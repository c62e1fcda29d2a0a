"""The single entry point: `create_encoder("kind:name", pretrained, **kwargs)`, plus listing and rebuilding."""

from __future__ import annotations

from typing import Any, Optional

from encoders.audio import HFAudioEncoder
from encoders.audio_mel import MelAudioEncoder
from encoders.base import Encoder, EncoderError, EncoderInfo
from encoders.image import ImageEncoder
from encoders.text import TextEncoder

_REGISTRY: dict[str, tuple[type, str, str]] = {
    "text": (
        TextEncoder,
        "transformers AutoModel + AutoTokenizer; pooling 'mean' (mask-aware) or 'cls'; kwargs pooling, max_length",
        "text:sentence-transformers/all-MiniLM-L6-v2",
    ),
    "image": (
        ImageEncoder,
        "timm backbone (num_classes=0) with timm train/eval transforms; a timm name or a local checkpoint file",
        "image:tf_efficientnet_lite0",
    ),
    "audio": (
        HFAudioEncoder,
        "transformers audio model (wav2vec2, HuBERT, WavLM, Whisper encoder, AST) + its feature extractor",
        "audio:facebook/wav2vec2-base",
    ),
    "audio-mel": (
        MelAudioEncoder,
        "log-mel spectrogram (computed in forward) into a 1-channel timm backbone; kwargs sample_rate, n_mels, max_seconds",
        "audio-mel:tf_efficientnet_lite0",
    ),
}


def parse_spec(spec: str) -> tuple[str, str]:
    """Split 'kind:name' (the name may itself contain ':')."""
    if not isinstance(spec, str) or ":" not in spec:
        raise EncoderError(f"encoder spec must look like 'kind:name' with kind in {sorted(_REGISTRY)}; got {spec!r}")
    kind, name = spec.split(":", 1)
    kind = kind.strip().lower()
    if kind not in _REGISTRY:
        raise EncoderError(f"unknown encoder kind {kind!r} in {spec!r}; known kinds: {sorted(_REGISTRY)}")
    if not name.strip():
        raise EncoderError(f"encoder spec {spec!r} names no model")
    return kind, name.strip()


def create_encoder(spec: str, pretrained: bool = True, **kwargs: Any) -> Encoder:
    """Build an encoder from a spec string such as 'text:<hub id or dir>' or 'image:<timm name or file>'."""
    kind, name = parse_spec(spec)
    cls = _REGISTRY[kind][0]
    try:
        return cls.create(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc) and "create()" in str(exc):
            raise EncoderError(f"{spec}: {exc}") from exc
        raise


def list_encoders() -> list[EncoderInfo]:
    """The encoder kinds with a description and an example spec."""
    return [EncoderInfo(kind, desc, example) for kind, (_, desc, example) in _REGISTRY.items()]


def encoder_from_config(config: dict[str, Any], assets_dir: Optional[str] = None) -> Encoder:
    """Rebuild an encoder's architecture (random weights, no network) from `get_config()` + `save_assets` files."""
    kind = config.get("kind")
    if kind not in _REGISTRY:
        raise EncoderError(f"encoder config has unknown kind {kind!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[kind][0].from_config(config, assets_dir)
