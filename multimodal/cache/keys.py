"""What a cache entry is keyed by: the encoder's fingerprint (which folder) and the item's content key (which entry).

* The **encoder fingerprint** is SHA-256 over the encoder's `spec`, `get_config()`, `preprocess_config()` (image
  size, max_length, sample rate, ...) and a hash of every tensor in its state dict. Change any of them and the
  cache lives in a different folder, so stale features are never read.
* The **content key** of an item is SHA-256 of the file's bytes for image/audio paths, of the UTF-8 text for
  text, of the pixel/sample buffer for in-memory arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn

from encoders.base import Encoder, jsonable
from encoders.image import to_rgb

ABSENT = "__absent__"
"""Content key of a missing sample; its features are the encoder's output on its neutral placeholder."""
UNREADABLE = "__unreadable__"
"""Key `FeatureCache.build` gives a source it could not hash (a missing or unreadable file); never cached."""

_FILE_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def weights_hash(module: nn.Module) -> str:
    """SHA-256 over every state-dict tensor (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def encoder_key_parts(encoder: Encoder) -> dict[str, Any]:
    """Everything that decides what the encoder outputs for an item: spec, configs, weights hash."""
    return {
        "spec": encoder.spec,
        "modality": encoder.modality,
        "config": encoder.get_config(),
        "preprocess": encoder.preprocess_config(),
        "weights": weights_hash(encoder),
    }


def encoder_fingerprint(encoder: Encoder, parts: Optional[dict[str, Any]] = None) -> str:
    """SHA-256 of `encoder_key_parts` (canonical JSON)."""
    parts = encoder_key_parts(encoder) if parts is None else parts
    blob = json.dumps(jsonable(parts), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, memoised per (path, size, mtime) within the process."""
    p = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(p)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"feature cache: file not found: {p}") from err
    memo_key = (p, st.st_size, st.st_mtime_ns)
    if memo_key not in _FILE_HASH_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_HASH_MEMO[memo_key] = h.hexdigest()
    return _FILE_HASH_MEMO[memo_key]


def content_key(modality: str, source: Any) -> str:
    """Content hash of one item: text content, file bytes for paths, buffer bytes for arrays/images."""
    if source is None:
        return ABSENT
    h = hashlib.sha256()
    if modality == "text":
        if not isinstance(source, str):
            raise TypeError(f"text item must be str, got {type(source).__name__}")
        h.update(b"text\0" + source.encode("utf-8"))
        return h.hexdigest()
    if isinstance(source, (str, os.PathLike)):
        return file_hash(source)
    if isinstance(source, dict):  # `datasets` cells: {"bytes"|"path"} images, {"array", "sampling_rate"} audio
        if source.get("bytes"):
            h.update(b"bytes\0" + bytes(source["bytes"]))
            return h.hexdigest()
        if source.get("array") is not None:
            return content_key(modality, (np.asarray(source["array"], dtype=np.float32), int(source["sampling_rate"])))
        if source.get("path"):
            return file_hash(source["path"])
    if isinstance(source, tuple) and len(source) == 2:  # (waveform, sample_rate)
        wave = np.ascontiguousarray(np.asarray(source[0]))
        h.update(f"wave\0{wave.dtype}\0{wave.shape}\0{int(source[1])}\0".encode())
        h.update(wave.tobytes())
        return h.hexdigest()
    if isinstance(source, np.ndarray):
        arr = np.ascontiguousarray(source)
        h.update(f"array\0{arr.dtype}\0{arr.shape}\0".encode())
        h.update(arr.tobytes())
        return h.hexdigest()
    if isinstance(source, Image.Image):
        # The pixels the encoder sees: palette, transparency and CMYK are resolved by the conversion.
        rgb = to_rgb(source)
        h.update(f"pil\0{rgb.mode}\0{rgb.size}\0".encode())
        h.update(rgb.tobytes())
        return h.hexdigest()
    raise TypeError(f"cannot compute a content key for a {type(source).__name__} {modality} item")
