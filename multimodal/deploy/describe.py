"""Export time: describe an encoder's eval-mode preprocessing as plain JSON (plus its tokenizer file), for
`multimodal.deploy.runtime.preprocess` to rebuild without the encoder. An encoder whose preprocessing cannot be
described gets a `DeployError` naming what is missing, rather than an exported folder that predicts wrongly."""

from __future__ import annotations

import os
from typing import Any

from encoders.audio import PLACEHOLDER_SECONDS, WAVEFORM_MODELS, HFAudioEncoder
from encoders.audio_mel import MelAudioEncoder
from encoders.base import Encoder, jsonable
from encoders.image import ImageEncoder
from encoders.text import TextEncoder
from multimodal.deploy.errors import DeployError


def describe_text(encoder: TextEncoder, folder: str, modality: str) -> dict[str, Any]:
    """Write ``<modality>/tokenizer.json`` and return the ``tokenizer`` spec (max_length, padding, truncation)."""
    tok = encoder.tokenizer
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise DeployError(f"{encoder.spec}: the tokenizer ({type(tok).__name__}) is not a fast tokenizer, so there "
                          "is no tokenizer.json to export; use a model with a fast (Rust) tokenizer")
    rel = os.path.join(modality, "tokenizer.json")
    os.makedirs(os.path.join(folder, modality), exist_ok=True)
    tok.backend_tokenizer.save(os.path.join(folder, rel))
    if tok.pad_token is None:
        raise DeployError(f"{encoder.spec}: the tokenizer has no padding token")
    return {"kind": "tokenizer", "file": rel, "max_length": encoder.max_length, "pad_id": int(tok.pad_token_id),
            "pad_token": str(tok.pad_token), "pad_type_id": int(getattr(tok, "pad_token_type_id", 0) or 0),
            "padding_side": tok.padding_side, "truncation_side": tok.truncation_side,
            "truncation_strategy": "longest_first", "outputs": ["input_ids", "attention_mask"]}


def describe_image(encoder: ImageEncoder) -> dict[str, Any]:
    """The ``image`` spec: the eval transform's resize / center-crop steps, read from the transform itself."""
    from torchvision import transforms as T

    transform = encoder.get_preprocessor(train=False).transform
    steps: list[dict[str, Any]] = []
    for t in getattr(transform, "transforms", [transform]):
        name = type(t).__name__
        if isinstance(t, T.Resize):
            size = [t.size] if isinstance(t.size, int) else list(t.size)
            steps.append({"op": "resize", "size": [int(s) for s in size], "interpolation": t.interpolation.value,
                          "max_size": t.max_size})
        elif isinstance(t, T.CenterCrop):
            steps.append({"op": "center_crop", "size": [int(s) for s in t.size]})
        elif name in ("MaybePILToTensor", "PILToTensor", "ToNumpy", "MaybeToNumpy"):
            continue  # uint8 HWC -> CHW, which the runtime does at the end
        else:
            raise DeployError(f"{encoder.spec}: the eval transform step {name} cannot be exported (supported: "
                              "Resize, CenterCrop, PILToTensor); use data_config crop_mode='center'")
    cfg = encoder.data_config
    return {"kind": "image", "steps": steps, "input_size": [int(v) for v in cfg["input_size"]],
            "mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]],
            "pixel_format": "uint8 RGB, CHW; mean/std are applied inside the graph", "outputs": ["pixel_values"]}


def describe_mel(encoder: MelAudioEncoder) -> dict[str, Any]:
    """The ``waveform`` spec: rate, clip length, and (for reference) the log-mel settings the graph computes."""
    pre = encoder.get_preprocessor(train=False)
    return {"kind": "waveform", "sample_rate": pre.sample_rate, "max_seconds": pre.max_seconds,
            "num_samples": pre.num_samples, "placeholder_seconds": PLACEHOLDER_SECONDS,
            "mel_in_graph": {"n_mels": encoder.n_mels, "n_fft": encoder.n_fft, "hop_length": encoder.hop_length,
                             "f_min": encoder.f_min, "f_max": encoder.f_max, "log_eps": encoder.frontend.eps},
            "outputs": ["waveform", "lengths"]}


def describe_hf_audio(encoder: HFAudioEncoder) -> dict[str, Any]:
    """The ``wav2vec2`` spec (wav2vec2 / HuBERT / WavLM family feature extractors)."""
    if encoder.model_type not in WAVEFORM_MODELS:
        raise DeployError(f"{encoder.spec}: export supports the waveform models {list(WAVEFORM_MODELS)}; the "
                          f"{encoder.model_type!r} feature extractor has no numpy runtime here")
    fe = encoder.feature_extractor
    return {"kind": "wav2vec2", "sample_rate": int(fe.sampling_rate), "max_seconds": encoder.max_seconds,
            "placeholder_seconds": PLACEHOLDER_SECONDS, "do_normalize": bool(fe.do_normalize),
            "padding_value": float(fe.padding_value), "padding_side": getattr(fe, "padding_side", "right"),
            "outputs": ["input_values", "attention_mask"]}


def describe_encoder(encoder: Encoder, folder: str, modality: str) -> dict[str, Any]:
    """The JSON spec of `encoder`'s eval preprocessing (files it needs are written under `folder`)."""
    if isinstance(encoder, TextEncoder):
        spec = describe_text(encoder, folder, modality)
    elif isinstance(encoder, ImageEncoder):
        spec = describe_image(encoder)
    elif isinstance(encoder, MelAudioEncoder):
        spec = describe_mel(encoder)
    elif isinstance(encoder, HFAudioEncoder):
        spec = describe_hf_audio(encoder)
    else:
        raise DeployError(f"{modality} encoder {type(encoder).__name__} ({getattr(encoder, 'spec', '?')}): export "
                          "knows the preprocessing of the text, image, audio (waveform models) and audio-mel kinds")
    spec["encoder"] = encoder.spec
    return jsonable(spec)
