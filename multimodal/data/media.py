"""The one place that decodes media: training, the feature cache, evaluation and prediction all call it.

A table cell is turned into the raw sample an encoder's preprocessor takes:

* image: a path (relative to the table's folder), ``{"bytes": ...}`` / ``{"path": ...}`` dicts (`datasets`
  images), a PIL image or a uint8 array -> a PIL image (palette images with transparency -> RGBA);
* audio: a path (WAV/FLAC/OGG through soundfile), ``{"array", "sampling_rate"}`` / ``{"path"}`` /
  ``{"bytes"}`` (encoded file) dicts or a ``(waveform, sample_rate)`` tuple -> ``(float32 [T] or [C, T], sample_rate)``;
* text and any other modality: the value itself (text as ``str``).
"""

from __future__ import annotations

import io
import os
import struct
from typing import Any, Optional

import numpy as np

FILE_MODALITIES = ("image", "audio")


def resolve_path(value: Any, base_dir: Optional[str]) -> str:
    """Absolute path of a table entry (relative entries resolve against the table's folder)."""
    path = os.path.expanduser(str(value))
    if not os.path.isabs(path) and base_dir:
        path = os.path.join(base_dir, path)
    return os.path.abspath(path)


def cell_path(value: Any, base_dir: Optional[str]) -> Optional[str]:
    """The file a cell points to (resolved), or None for in-memory samples (bytes, arrays, PIL images)."""
    if isinstance(value, dict):
        if value.get("bytes") or value.get("array") is not None:
            return None
        value = value.get("path")
    if isinstance(value, (str, os.PathLike)):
        return resolve_path(value, base_dir)
    return None


def load_image(value: Any, base_dir: Optional[str] = None) -> Any:
    """A PIL image from a path, a ``{"bytes"|"path"}`` dict, a PIL image or an array (arrays pass through)."""
    from PIL import Image

    if isinstance(value, (Image.Image, np.ndarray)):
        return value
    if isinstance(value, dict) and value.get("bytes"):
        image = Image.open(io.BytesIO(value["bytes"]))
        image.load()
        return image
    path = cell_path(value, base_dir)
    if path is None:
        raise TypeError(f"cannot read an image from a {type(value).__name__}")
    with Image.open(path) as image:
        image.load()
        return image.copy() if image.mode != "P" else image.convert("RGBA")


def load_audio(value: Any, base_dir: Optional[str] = None) -> tuple[np.ndarray, int]:
    """``(waveform float32 [T] or [C, T], sample_rate)`` from a path, a dict (array, encoded bytes or path) or a
    ``(waveform, sr)`` tuple."""
    import soundfile as sf

    if isinstance(value, (tuple, list)) and len(value) == 2 and not isinstance(value[0], str):
        wave, sr = value
        return np.asarray(wave, dtype=np.float32), int(sr)
    if isinstance(value, dict) and value.get("array") is not None:
        return np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
    if isinstance(value, dict) and value.get("bytes"):  # encoded file bytes (WebDataset members, datasets Audio)
        data, sr = sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
        return (data[:, 0] if data.shape[1] == 1 else np.ascontiguousarray(data.T)), int(sr)
    path = cell_path(value, base_dir)
    if path is None:
        raise TypeError(f"cannot read audio from a {type(value).__name__}")
    cut = wav_truncation(path)
    if cut:
        raise ValueError(cut)  # libsndfile would read the part that is there, without a word
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path!r} is empty")
    wave = data[:, 0] if data.shape[1] == 1 else np.ascontiguousarray(data.T)
    return wave, int(sr)


def wav_truncation(path: str) -> Optional[str]:
    """For a RIFF/WAVE file whose data chunk is shorter than its header says (a copy or write cut short), the
    message saying so; None for complete files, other formats and WAVs that leave the length open (0 or -1)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        order = "<" if head[:4] == b"RIFF" else ">"
        size = os.fstat(f.fileno()).st_size
        pos, block = 12, 0
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(16)
            name, length = chunk[:4], struct.unpack(order + "I", chunk[4:8])[0]
            if name == b"fmt " and len(chunk) >= 16:
                f.seek(pos + 8 + 12)
                block = struct.unpack(order + "H", f.read(2))[0]
            if name == b"data":
                held = size - pos - 8
                if length in (0, 0xFFFFFFFF) or held >= length:
                    return None
                if block:
                    return (f"audio file {path!r} is truncated: its header declares {length // block} frames, the "
                            f"file holds {held // block} ({held / length:.0%})")
                return f"audio file {path!r} is truncated: {held} of the {length} bytes of audio data are there"
            pos += 8 + length + (length & 1)
    return None


def load_sample(modality: str, value: Any, base_dir: Optional[str] = None) -> Any:
    """The raw sample of one cell for `modality` (see the module docstring)."""
    if modality == "image":
        return load_image(value, base_dir)
    if modality == "audio":
        return load_audio(value, base_dir)
    if modality == "text":
        return str(value)
    return value


def check_image(value: Any, base_dir: Optional[str] = None) -> None:
    """Raise if the image cannot be decoded (JPEGs are decoded at reduced scale: the whole stream is read)."""
    from PIL import Image

    if isinstance(value, np.ndarray):
        if value.ndim not in (2, 3):
            raise ValueError(f"image array has shape {value.shape}; expected HxW or HxWxC")
        return
    if isinstance(value, Image.Image):
        return
    if isinstance(value, dict) and value.get("bytes"):
        load_image(value, base_dir)
        return
    path = cell_path(value, base_dir)
    if path is None:
        raise TypeError(f"an image cell must be a path, bytes, a PIL image or an array; got {type(value).__name__}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file {path!r} not found")
    with Image.open(path) as image:
        image.draft("RGB", (64, 64))
        image.load()


def check_audio(value: Any, base_dir: Optional[str] = None) -> None:
    """Raise if the audio is missing, empty, unreadable or cut short (files: the header, the first and last frames)."""
    import soundfile as sf

    path = cell_path(value, base_dir)
    if path is None:
        wave, sr = load_audio(value, base_dir)
        if wave.size == 0:
            raise ValueError("audio is empty")
        if sr <= 0:
            raise ValueError(f"audio has sampling rate {sr}")
        return
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio file {path!r} not found")
    cut = wav_truncation(path)
    if cut:
        raise ValueError(cut)
    info = sf.info(path)
    if info.frames <= 0:
        raise ValueError(f"audio file {path!r} is empty")
    with sf.SoundFile(path) as f:  # the first and the last frames: a compressed file cut short fails at its end
        f.read(min(info.frames, 1024), dtype="float32")
        try:
            f.seek(max(0, info.frames - 1024))
            f.read(1024, dtype="float32")
        except RuntimeError as err:  # soundfile's LibsndfileError
            raise ValueError(f"audio file {path!r} cannot be decoded up to its last frames ({err}); is it cut "
                             "short?") from None


def check_sample(modality: str, value: Any, base_dir: Optional[str] = None) -> None:
    """Raise if the cell cannot be used for `modality`."""
    if modality == "image":
        check_image(value, base_dir)
    elif modality == "audio":
        check_audio(value, base_dir)
    elif modality == "text" and not isinstance(value, str):
        raise ValueError(f"text must be a string, got {type(value).__name__}")


def describe(value: Any, base_dir: Optional[str]) -> str:
    """' (file /abs/path)' for path-like cells, '' for in-memory samples."""
    path = cell_path(value, base_dir)
    return f" (file {path})" if path else ""
