"""The one place that decodes media: training, the feature cache, evaluation, prediction, the server and the
streaming shards all call it, with the same `MediaLimits`.

A table cell is turned into the raw sample an encoder's preprocessor takes:

* image: a path (relative to the table's folder), ``{"bytes": ...}`` / ``{"path": ...}`` dicts (`datasets`
  images), a PIL image or a uint8 array -> a PIL image. Files are opened only as PNG, JPEG, WebP, BMP, GIF (first
  frame) or TIFF (`ALLOWED_IMAGE_FORMATS`): Pillow's other plugins are never tried (its EPS plugin runs
  Ghostscript). The size is read from the header and checked before any pixel is decoded: at most
  ``max_image_pixels`` pixels (a larger JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg when that fits) and
  sides at most ``max_image_aspect`` : 1. When the model's eval-mode resize is known (``image_draft_side``, see
  `apply_image_draft`), a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose shorter side stays at least
  that size: the resize then gives the same pixels within its own rounding, from far less decoding work.
* audio: a path (WAV/FLAC/OGG/MP3 through soundfile), ``{"array", "sampling_rate"}`` / ``{"path"}`` /
  ``{"bytes"}`` (encoded file) dicts or a ``(waveform, sample_rate)`` tuple -> ``(float32 [T] or [C, T],
  sample_rate)``. Files are checked from their header (`soundfile.info`) before decoding: at most
  ``max_audio_seconds`` long and ``max_audio_rate`` Hz; a WAV whose data chunk is cut short is refused (paths
  and bytes alike); only the clip window is decoded when the model's is known (``audio_window_seconds``: from
  the start, or at a seeded random offset for training items), and files are decoded to mono block by block.
* text: the value as ``str``, cut to ``max_text_chars`` characters (the tokenizer keeps far fewer tokens).

A sample over a limit raises `MediaLimitError` (a ValueError naming the limit and its option), which the
dataset turns into a `BadSampleError` (counted skip or error), the predictor into a `BadInputError` and the
server into a 400 answer.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import numpy as np

from multimodal.data.audio_files import read_audio, wav_truncation
from multimodal.data.limits import ALLOWED_IMAGE_FORMATS, DEFAULT_LIMITS, MediaLimitError, MediaLimits

FILE_MODALITIES = ("image", "audio")
DRAFT_GAP = 2
"""A drafted JPEG keeps at least this many decoded pixels per resized pixel (Pillow's ``reducing_gap`` idea): the
resize then averages as it would over the full decode (real photos: mean difference under one grey level)."""

__all__ = ["ALLOWED_IMAGE_FORMATS", "DEFAULT_LIMITS", "apply_audio_window", "apply_image_draft", "image_draft_side", "audio_window", "FILE_MODALITIES", "MediaLimitError", "MediaLimits", "cell_path",
           "check_audio", "check_image", "check_sample", "describe", "load_audio", "load_image", "load_sample",
           "load_text", "resolve_path", "wav_truncation"]


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


def _file(value: Any, base_dir: Optional[str], what: str) -> Any:
    """The path, or a BytesIO over the ``{"bytes"}`` of a cell."""
    if isinstance(value, dict) and value.get("bytes"):
        return io.BytesIO(value["bytes"])
    path = cell_path(value, base_dir)
    if path is None:
        raise TypeError(f"cannot read {what} from a {type(value).__name__}")
    return path


# ------------------------------------------------------------------------------------------------ images
def check_image_size(width: int, height: int, limits: MediaLimits) -> None:
    """Refuse an empty, too large or too elongated image, from its size alone."""
    if width < 1 or height < 1:
        raise MediaLimitError(f"image is {width} x {height} pixels: empty")
    if width * height > limits.max_image_pixels:
        raise MediaLimitError(f"image is {width} x {height} = {width * height:,} pixels; the limit is "
                              f"{limits.max_image_pixels:,} (max_image_pixels)")
    if max(width, height) > limits.max_image_aspect * min(width, height):
        raise MediaLimitError(f"image is {width} x {height} pixels, {max(width, height) / min(width, height):.0f}:1; "
                              f"the limit is {limits.max_image_aspect:g}:1 (max_image_aspect)")


def _sniffed_formats(head: bytes) -> list[str]:
    """The Pillow formats whose signature checks (tests of the first bytes, no plugin code) accept `head`."""
    from PIL import Image

    Image.init()
    found = []
    for name, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(head):
                found.append(name)
        except Exception:  # noqa: BLE001, S112 - a signature check that cannot read these bytes does not match
            continue
    return found


def _jpeg_scale(width: int, height: int, limits: MediaLimits, draft: Optional[int]) -> int:
    """1, 2, 4 or 8: the DCT scale a JPEG is decoded at, to fit `max_image_pixels` (or, with `draft`, the
    smallest scale that keeps both sides at least `draft` pixels: the eval-mode resize's side, or a small size for a
    check that only needs the decode to run)."""
    scale = 1
    while scale < 8 and width * height > limits.max_image_pixels * scale * scale:
        scale *= 2
    while draft is not None and scale < 8 and min(width, height) // (scale * 2) >= draft:
        scale *= 2
    return scale


def _open_checked(source: Any, limits: MediaLimits, draft: Optional[int]) -> Any:
    """Open `source` (a binary file object) with the allow-list, check the header size, decode the first frame."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit applies below
            image = Image.open(source, formats=ALLOWED_IMAGE_FORMATS)
    except UnidentifiedImageError:
        source.seek(0)
        found = _sniffed_formats(source.read(16))
        allowed = ", ".join(ALLOWED_IMAGE_FORMATS)
        if set(found) & set(ALLOWED_IMAGE_FORMATS):  # Pillow's own error type, with a message that says why
            raise UnidentifiedImageError(f"a damaged or truncated {'/'.join(found)} image (it cannot be opened)") from None
        if found:
            raise MediaLimitError(f"refused: the file looks like {' or '.join(found)}, and images are read only as "
                                  f"{allowed}") from None
        raise UnidentifiedImageError(f"not an image in an allowed format ({allowed})") from None
    except Image.DecompressionBombError as err:
        raise MediaLimitError(str(err)) from None
    if image.format in ("JPEG", "MPO"):
        scale = _jpeg_scale(*image.size, limits, draft)
        if scale > 1:  # libjpeg decodes at 1/2, 1/4 or 1/8 scale for free
            image.draft(image.mode, (-(-image.size[0] // scale), -(-image.size[1] // scale)))
    check_image_size(*image.size, limits)
    image.load()  # the first frame of a GIF, an animated WebP or a multi-page TIFF
    return image


def open_image(value: Any, base_dir: Optional[str], limits: MediaLimits, draft: Optional[int] = None) -> Any:
    """A decoded PIL image from a file cell (a path or ``{"bytes"}``), through the allow-list and the limits."""
    source = _file(value, base_dir, "an image")
    if isinstance(source, io.BytesIO):
        return _open_checked(source, limits, draft)
    with open(source, "rb") as f:  # our handle: closed here, the decoded image no longer needs it
        return _open_checked(f, limits, draft)


def load_image(value: Any, base_dir: Optional[str] = None, limits: MediaLimits = DEFAULT_LIMITS) -> Any:
    """A PIL image from a path, a ``{"bytes"|"path"}`` dict, a PIL image or an array (arrays pass through)."""
    from PIL import Image

    if isinstance(value, Image.Image):
        check_image_size(*value.size, limits)
        return value
    if isinstance(value, np.ndarray):
        if value.ndim in (2, 3):
            h, w = value.shape[:2] if value.ndim == 2 or value.shape[-1] in (1, 3, 4) else value.shape[1:]
            check_image_size(int(w), int(h), limits)
        return value
    return open_image(value, base_dir, limits, draft=limits.image_draft_side)


def check_image(value: Any, base_dir: Optional[str] = None, limits: MediaLimits = DEFAULT_LIMITS) -> None:
    """Raise if the image cannot be decoded or is over a limit (JPEGs are decoded at reduced scale)."""
    from PIL import Image

    if isinstance(value, np.ndarray):
        if value.ndim not in (2, 3):
            raise ValueError(f"image array has shape {value.shape}; expected HxW or HxWxC")
        load_image(value, base_dir, limits)
        return
    if isinstance(value, Image.Image):
        load_image(value, base_dir, limits)
        return
    path = cell_path(value, base_dir)
    if path is None and not (isinstance(value, dict) and value.get("bytes")):
        raise TypeError(f"an image cell must be a path, bytes, a PIL image or an array; got {type(value).__name__}")
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(f"image file {path!r} not found")
    open_image(value, base_dir, limits, draft=64)


# ------------------------------------------------------------------------------------------------ audio
def _check_in_memory_audio(wave: np.ndarray, sr: int, limits: MediaLimits) -> None:
    if not 0 < sr <= limits.max_audio_rate:
        raise MediaLimitError(f"audio sampling rate {sr} Hz is outside 1..{limits.max_audio_rate} (max_audio_rate)")
    seconds = (wave.shape[-1] if wave.ndim else 0) / sr
    if seconds > limits.max_audio_seconds:
        raise MediaLimitError(f"audio is {seconds:.1f} s long; the limit is {limits.max_audio_seconds:g} s "
                              "(max_audio_seconds)")


def load_audio(value: Any, base_dir: Optional[str] = None, limits: MediaLimits = DEFAULT_LIMITS,
               seed: Optional[int] = None) -> tuple[np.ndarray, int]:
    """``(waveform float32 [T] or [C, T], sample_rate)`` from a path, a dict (array, encoded bytes or path) or a
    ``(waveform, sr)`` tuple; files are decoded to mono, within ``limits.audio_window_seconds`` (at a random offset
    drawn from `seed` when given, else from the start)."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and not isinstance(value[0], str):
        wave, sr = np.asarray(value[0], dtype=np.float32), int(value[1])
    elif isinstance(value, dict) and value.get("array") is not None:
        wave, sr = np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
    else:
        return read_audio(_file(value, base_dir, "audio"), limits, seed)
    _check_in_memory_audio(wave, sr, limits)
    return wave, sr


def check_audio(value: Any, base_dir: Optional[str] = None, limits: MediaLimits = DEFAULT_LIMITS) -> None:
    """Raise if the audio is missing, empty, unreadable, cut short or over a limit (files: the header, the
    first and the last frames)."""
    path = cell_path(value, base_dir)
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(f"audio file {path!r} not found")
    if path is None and not (isinstance(value, dict) and value.get("bytes")):
        wave, sr = load_audio(value, base_dir, limits)
        if wave.size == 0:
            raise ValueError("audio is empty")
        return
    read_audio(_file(value, base_dir, "audio"), limits, None, ends_only=True)


# ------------------------------------------------------------------------------------------------ text and dispatch
def load_text(value: Any, limits: MediaLimits = DEFAULT_LIMITS) -> str:
    """The text of a cell, cut to ``limits.max_text_chars`` characters."""
    text = str(value)
    return text[: limits.max_text_chars] if len(text) > limits.max_text_chars else text


def load_sample(modality: str, value: Any, base_dir: Optional[str] = None, limits: MediaLimits = DEFAULT_LIMITS,
                seed: Optional[int] = None) -> Any:
    """The raw sample of one cell for `modality` (see the module docstring); `seed` places a training item's
    audio window."""
    if modality == "image":
        return load_image(value, base_dir, limits)
    if modality == "audio":
        return load_audio(value, base_dir, limits, seed)
    if modality == "text":
        return load_text(value, limits)
    return value


def check_sample(modality: str, value: Any, base_dir: Optional[str] = None, limits: MediaLimits = DEFAULT_LIMITS) -> None:
    """Raise if the cell cannot be used for `modality`."""
    if modality == "image":
        check_image(value, base_dir, limits)
    elif modality == "audio":
        check_audio(value, base_dir, limits)
    elif modality == "text" and not isinstance(value, str):
        raise ValueError(f"text must be a string, got {type(value).__name__}")


def audio_window(preprocessors: Mapping[str, Any]) -> Optional[float]:
    """The clip (seconds) the ``audio`` preprocessor keeps (its ``max_seconds``); None when it keeps whole clips
    or there is none."""
    return getattr(preprocessors.get("audio"), "max_seconds", None) or None


def image_draft_side(preprocessors: Mapping[str, Any]) -> Optional[int]:
    """`DRAFT_GAP` times the shorter side the eval-mode ``image`` preprocessor resizes to (its ``resize_side()``);
    None when it has no plain resize, or there is none."""
    resize_side = getattr(preprocessors.get("image"), "resize_side", None)
    side = resize_side() if callable(resize_side) else None
    return int(side * DRAFT_GAP) if side else None


def apply_image_draft(datasets: Iterable[Any], preprocessors: Mapping[str, Any]) -> None:
    """Make each dataset (None skipped) decode JPEGs at reduced scale, down to the eval-mode resize of the model's
    ``image`` preprocessor (`image_draft_side`). Only for data that is preprocessed in eval mode: a training
    augmentation's random crop may need more pixels than the eval resize keeps."""
    side = image_draft_side(preprocessors)
    for dataset in datasets:
        if dataset is not None and hasattr(dataset, "set_image_draft"):
            dataset.set_image_draft(side)


def apply_audio_window(datasets: Iterable[Any], preprocessors: Mapping[str, Any]) -> None:
    """Make each dataset (None skipped) decode only the audio the model's preprocessors keep (`audio_window`)."""
    window = audio_window(preprocessors)
    for dataset in datasets:
        if dataset is not None and hasattr(dataset, "set_audio_window"):
            dataset.set_audio_window(window)


def describe(value: Any, base_dir: Optional[str]) -> str:
    """' (file /abs/path)' for path-like cells, '' for in-memory samples."""
    path = cell_path(value, base_dir)
    return f" (file {path})" if path else ""
