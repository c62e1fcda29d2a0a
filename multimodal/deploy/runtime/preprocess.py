"""Preprocessing of an exported folder, rebuilt from the plain JSON (and tokenizer file) written beside its graphs.

It reproduces the encoders' eval-mode preprocessors with numpy, Pillow and `tokenizers` only (no torch
computation), so an exported model runs through ONNX Runtime alone. What each spec kind does, and which
encoder writes it (`multimodal.deploy.describe`):

* ``tokenizer`` (text): `tokenizers.Tokenizer` from ``tokenizer.json``, each text first cut to
  `encoders.samples.MAX_TEXT_CHARS` characters (on the side truncation drops), truncation to ``max_length`` and
  padding to the longest text of the batch -> ``input_ids`` / ``attention_mask`` (int64). None -> "".
* ``image`` (timm image encoders): RGB conversion (`encoders.samples.to_rgb`, the training code), then the
  eval transform's steps (shorter-side resize with Pillow's filter and torchvision's ``max_size``, center crop
  with zero padding, exactly torchvision's arithmetic) -> ``pixel_values`` uint8 [B, 3, H, W]; mean/std are
  applied inside the graph.
* ``waveform`` (audio-mel): mono (`encoders.samples.to_mono_float`), resampling (`resample`, the windowed-sinc
  filter torchaudio uses, in numpy, from `encoders.samples.bounded_rate`), crop to ``max_seconds`` from the
  start, zero padding to a fixed length ->
  ``waveform`` float32 [B, N] and ``lengths`` int64; the log-mel spectrogram is inside the graph.
* ``wav2vec2`` (HF wav2vec2 / HuBERT / WavLM ...): mono, resampling, crop, per-clip zero-mean unit-variance
  over the real samples, padding to the longest clip -> ``input_values`` float32 and ``attention_mask`` int64.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
from PIL import Image

from encoders.samples import MAX_IMAGE_ASPECT, MAX_TEXT_CHARS, bounded_rate, load_waveforms, rgb_images
from multimodal.deploy.errors import DeployError

PIL_FILTERS = {
    "nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS,
    "box": Image.BOX, "hamming": Image.HAMMING,
}
NumpyPreprocessor = Callable[[list], dict]


# ------------------------------------------------------------------------------------------------ text
class TokenizerPreprocessor:
    """Texts (None -> "") -> int64 ``input_ids`` / ``attention_mask``, padded to the longest, as training tokenizes."""

    def __init__(self, spec: dict[str, Any], folder: str) -> None:
        from tokenizers import Tokenizer

        path = os.path.join(folder, spec["file"])
        if not os.path.isfile(path):
            raise DeployError(f"tokenizer file {path} not found: the exported folder is incomplete")
        try:
            self.tokenizer = Tokenizer.from_file(path)
        except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a damaged file
            raise DeployError(f"tokenizer file {path} cannot be read: {err}") from None
        self.cut_left = spec.get("truncation_side", "right") == "left"
        self.tokenizer.enable_truncation(int(spec["max_length"]), strategy=spec.get("truncation_strategy", "longest_first"),
                                         direction=spec.get("truncation_side", "right"))
        self.tokenizer.enable_padding(direction=spec.get("padding_side", "right"), pad_id=int(spec["pad_id"]),
                                      pad_type_id=int(spec.get("pad_type_id", 0)), pad_token=spec["pad_token"])

    def __call__(self, batch: list) -> dict[str, np.ndarray]:
        texts = []
        for i, item in enumerate(batch):
            if item is not None and not isinstance(item, str):
                raise TypeError(f"text sample {i}: expected str or None, got {type(item).__name__}")
            text = item or ""
            if len(text) > MAX_TEXT_CHARS:  # tokenizing a 9 MB text to keep max_length tokens costs seconds
                text = text[-MAX_TEXT_CHARS:] if self.cut_left else text[:MAX_TEXT_CHARS]
            texts.append(text)
        encodings = self.tokenizer.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}


# ------------------------------------------------------------------------------------------------ image
def resized_size(height: int, width: int, size: list[int], max_size: Optional[int] = None) -> tuple[int, int]:
    """(h, w) after a resize to `size` (one value: the shorter side, keeping the aspect ratio), as torchvision."""
    if len(size) == 2:
        return int(size[0]), int(size[1])
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = int(size[0]), int(int(size[0]) * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), int(max_size)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def center_crop_box(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of a center crop; outside the image Pillow fills zeros, as torchvision pads."""
    top = -((crop_h - height) // 2) if crop_h > height else int(round((height - crop_h) / 2.0))
    left = -((crop_w - width) // 2) if crop_w > width else int(round((width - crop_w) / 2.0))
    return left, top, left + crop_w, top + crop_h


class NumpyImagePreprocessor:
    """Images (PIL / numpy / None -> black) -> uint8 ``pixel_values`` [B, 3, H, W] through the eval steps."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.steps = list(spec["steps"])
        self.input_size = tuple(int(v) for v in spec["input_size"])
        for step in self.steps:
            if step["op"] not in ("resize", "center_crop"):
                raise DeployError(f"image preprocessing step {step['op']!r} is not supported by this runtime")
            if step["op"] == "resize" and step["interpolation"] not in PIL_FILTERS:
                raise DeployError(f"image resize interpolation {step['interpolation']!r} is not supported")

    def transform(self, image: Image.Image) -> np.ndarray:
        """One RGB image -> uint8 [3, H, W]."""
        for step in self.steps:
            w, h = image.size
            if step["op"] == "resize":
                max_size = step.get("max_size") or int(step["size"][0] * MAX_IMAGE_ASPECT)  # folders exported before
                new_h, new_w = resized_size(h, w, step["size"], max_size)  # max_size was set have none
                if (new_h, new_w) != (h, w):
                    image = image.resize((new_w, new_h), PIL_FILTERS[step["interpolation"]])
            else:
                crop_h, crop_w = (int(v) for v in step["size"])
                if (crop_h, crop_w) != (h, w):
                    image = image.crop(center_crop_box(h, w, crop_h, crop_w))
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    def __call__(self, batch: list) -> dict[str, np.ndarray]:
        arrays = [self.transform(image) for image in rgb_images(batch, self.input_size)]
        if not arrays:
            return {"pixel_values": np.zeros((0, *self.input_size), dtype=np.uint8)}
        return {"pixel_values": np.stack(arrays)}


# ------------------------------------------------------------------------------------------------ audio
def sinc_kernel(orig: int, new: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> tuple[np.ndarray, int]:
    """Windowed-sinc (Hann) polyphase filters [new, K] for rates already divided by their gcd, and the pad width;
    computed in float32, as torchaudio computes them for a float32 waveform."""
    f32 = np.float32
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = np.arange(-width, width + orig, dtype=f32)[None, :] / f32(orig)
    t = (np.arange(0, -new, -1, dtype=f32)[:, None] / f32(new) + idx) * f32(base)
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width).astype(f32)
    window = np.cos(t * f32(math.pi / lowpass_filter_width / 2)) ** 2
    t = t * f32(math.pi)
    safe = np.where(t == 0, f32(1.0), t)
    kernels = np.where(t == 0, f32(1.0), np.sin(safe) / safe)
    return (kernels * (window * f32(base / orig))).astype(f32), width


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a mono float32 waveform with the band-limited sinc interpolation training uses (torchaudio's),
    from `bounded_rate(orig_rate, new_rate)` so the filter bank stays small."""
    orig_rate, new_rate = bounded_rate(orig_rate, new_rate), int(new_rate)
    if orig_rate == new_rate:
        return wave
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    kernels, width = sinc_kernel(orig, new)
    padded = np.pad(np.asarray(wave, dtype=np.float32), (width, width + orig))
    taps = kernels.shape[1]
    frames = (padded.shape[0] - taps) // orig + 1
    windows = np.lib.stride_tricks.as_strided(padded, shape=(frames, taps),
                                              strides=(padded.strides[0] * orig, padded.strides[0]))
    out = (windows @ kernels.T).reshape(-1)
    return np.ascontiguousarray(out[: math.ceil(new * wave.shape[0] / orig)], dtype=np.float32)


def waveforms(batch: list, sample_rate: int, max_seconds: Optional[float], placeholder_seconds: float) -> list[np.ndarray]:
    """``(waveform, sr)`` samples -> mono float32 at `sample_rate`, cropped from the start; None -> a short silence
    (the encoders' own `load_waveforms` in eval mode, with the numpy resampler above)."""
    return load_waveforms(batch, sample_rate, max_seconds, train=False, resampler=resample,
                          placeholder_seconds=placeholder_seconds)


class WaveformPreprocessor:
    """Audio -> fixed-length ``waveform`` float32 [B, N] plus true ``lengths`` (the graph computes the log-mel)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.sample_rate, self.max_seconds = int(spec["sample_rate"]), float(spec["max_seconds"])
        self.num_samples = int(spec["num_samples"])
        self.placeholder_seconds = float(spec["placeholder_seconds"])

    def __call__(self, batch: list) -> dict[str, np.ndarray]:
        waves = waveforms(batch, self.sample_rate, self.max_seconds, self.placeholder_seconds)
        out = np.zeros((len(waves), self.num_samples), dtype=np.float32)
        lengths = np.zeros(len(waves), dtype=np.int64)
        for i, w in enumerate(waves):
            n = min(len(w), self.num_samples)
            out[i, :n], lengths[i] = w[:n], n
        return {"waveform": out, "lengths": lengths}


class Wav2Vec2Preprocessor:
    """Audio -> ``input_values`` (normalised per clip over its real samples) and ``attention_mask``, padded to the longest."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.sample_rate = int(spec["sample_rate"])
        self.max_seconds = spec.get("max_seconds")
        self.placeholder_seconds = float(spec["placeholder_seconds"])
        self.do_normalize, self.padding_value = bool(spec["do_normalize"]), float(spec["padding_value"])
        if spec.get("padding_side", "right") != "right":
            raise DeployError("wav2vec2 preprocessing: only right padding is supported")

    def __call__(self, batch: list) -> dict[str, np.ndarray]:
        waves = waveforms(batch, self.sample_rate, self.max_seconds, self.placeholder_seconds)
        longest = max((len(w) for w in waves), default=0)
        values = np.full((len(waves), longest), self.padding_value, dtype=np.float32)
        mask = np.zeros((len(waves), longest), dtype=np.int64)
        for i, w in enumerate(waves):
            n = len(w)
            mask[i, :n] = 1
            if self.do_normalize:
                row = np.full(longest, 0.0, dtype=np.float32)
                row[:n] = w
                row = (row - row[:n].mean()) / np.sqrt(row[:n].var() + 1e-7)
                row[n:] = self.padding_value
                values[i] = row
            else:
                values[i, :n] = w
        return {"input_values": values, "attention_mask": mask}


def build_preprocessor(spec: dict[str, Any], folder: str) -> NumpyPreprocessor:
    """The numpy preprocessor a ``preprocessing`` entry of ``deploy.json`` describes (`folder`: the exported folder)."""
    kind = spec.get("kind")
    if kind == "tokenizer":
        return TokenizerPreprocessor(spec, folder)
    if kind == "image":
        return NumpyImagePreprocessor(spec)
    if kind == "waveform":
        return WaveformPreprocessor(spec)
    if kind == "wav2vec2":
        return Wav2Vec2Preprocessor(spec)
    raise DeployError(f"unknown preprocessing kind {kind!r} in {folder}; this runtime reads tokenizer, image, "
                      "waveform and wav2vec2")
