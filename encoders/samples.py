"""Raw samples to arrays with numpy and Pillow only (no torch): RGB conversion of images, mono float waveforms,
clip cropping, and the bounded choice of resampling rates.

The encoders' preprocessors (torch) and the exported-model runtime (`multimodal.deploy.runtime`, numpy) both
run these functions, so an exported model sees the pixels and samples training saw. Importing this module
does not import torch (``encoders/__init__`` loads its public names lazily).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

PLACEHOLDER_SECONDS = 1.0  # an absent audio sample becomes this much silence
# Resampling from `orig` to `new` Hz costs O(orig/g x new/g) for g = gcd(orig, new) (the polyphase filter bank of
# torchaudio and of the numpy runtime): rates whose reduced factors exceed this are moved to the nearest rate
# that keeps both factors within it (16001 Hz -> 16000 Hz; a pitch change of at most a few hundredths of a percent).
MAX_RESAMPLE_FACTOR = 1500
# The longest side of an image may be at most this many times its shortest (after a shorter-side resize, the
# eval transform's longer side is capped at this multiple too: `encoders.image.bounded_resize`).
MAX_IMAGE_ASPECT = 32.0
MAX_SAMPLE_RATE = 384_000
# Texts are cut to this many characters before tokenising (the decode layer and the exported runtime): a
# tokenizer that keeps max_length tokens still reads the whole text first (a 9 MB text took 18 s).
MAX_TEXT_CHARS = 100_000


# ------------------------------------------------------------------------------------------------ images
def to_rgb(image: Union[Image.Image, np.ndarray]) -> Image.Image:
    """Convert a PIL image of any mode, or an HxW / HxWxC / CxHxW array, to an 8-bit RGB PIL image.

    Transparency is composited over white; 16-bit and 32-bit integer images are scaled to 8 bits;
    float arrays are taken to be in [0, 1].
    """
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image or numpy array, got {type(image).__name__}")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image)
        return _array_to_pil(arr).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Pasting through the alpha band onto white gives alpha_composite's pixels exactly, with a third of its
        # memory (a 10 Mpx RGBA image: +70 MB instead of +190 MB).
        masked = image if mode in ("RGBA", "LA") else image.convert("RGBA")
        out = Image.new("RGB", image.size, (255, 255, 255))
        out.paste(masked, (0, 0), masked)
        return out
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """numpy -> PIL (8-bit L, RGB or RGBA)."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CxHxW -> HxWxC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"image array must be HxW, HxWx1/3/4 or 1/3/4xHxW; got shape {arr.shape}")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.uint16:
        wide = arr.astype(np.uint32)
        wide *= 255
        wide //= 65535  # in place: a 16-bit image costs 4 bytes per pixel here, not 12
        arr = wide.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        top = max(int(arr.max()), 1) if arr.size else 1
        scale = 255 if top <= 255 else (65535 if top <= 65535 else top)
        arr = (np.clip(arr.astype(np.int64), 0, None) * 255 // scale).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image array dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L")
    return Image.fromarray(arr, mode="RGB" if arr.shape[-1] == 3 else "RGBA")


def rgb_images(batch: list, input_size: tuple[int, ...]) -> list[Image.Image]:
    """A batch of images (PIL / numpy / None) -> RGB PIL images; None becomes a black image of `input_size`
    (C, H, W); a sample that cannot be converted raises ``ValueError("image sample <i>: ...")``."""
    out = []
    for i, item in enumerate(batch):
        if item is None:
            _, h, w = input_size
            out.append(Image.new("RGB", (int(w), int(h))))
            continue
        try:
            out.append(to_rgb(item))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"image sample {i}: {exc}") from exc
    return out


# ------------------------------------------------------------------------------------------------ audio
def to_mono_float(waveform: Any, index: int) -> np.ndarray:
    """A waveform [T], [C, T] (or soundfile's [T, C]) -> float32 mono [T]."""
    arr = np.asarray(waveform)
    if arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        arr = arr.astype(np.float32) / float(max(abs(info.min), info.max))
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        if arr.shape[0] <= 8 and arr.shape[0] <= arr.shape[1]:
            arr = arr.mean(axis=0)
        elif arr.shape[1] <= 8:
            arr = arr.mean(axis=1)
        else:
            raise ValueError(f"audio sample {index}: 2-D waveform {arr.shape} is not [channels, time]")
    if arr.ndim != 1:
        raise ValueError(f"audio sample {index}: waveform must be [T] or [C, T], got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"audio sample {index}: empty waveform")
    if not np.isfinite(arr).all():
        raise ValueError(f"audio sample {index}: waveform contains NaN or inf")
    return arr


def bounded_rate(orig: int, target: int, max_factor: int = MAX_RESAMPLE_FACTOR) -> int:
    """`orig`, or the rate nearest to it whose up/down factors against `target` are both at most `max_factor`
    (so the resampling filter bank stays small); the result differs from `orig` by well under 1%."""
    orig, target = int(orig), int(target)
    if orig <= 0 or target <= 0:
        raise ValueError(f"sample rates must be positive, got {orig} and {target}")
    for step in range(0, max(1, orig // 100) + 1):
        for rate in (orig - step, orig + step) if step else (orig,):
            g = math.gcd(rate, target)
            if rate > 0 and rate // g <= max_factor and target // g <= max_factor:
                return rate
    raise ValueError(f"no sample rate within 1% of {orig} Hz resamples to {target} Hz with factors <= {max_factor}")


def input_span(out_len: int, orig: int, new: int) -> int:
    """How many leading input samples fix the first `out_len` outputs of a windowed-sinc resampling from `orig` to
    `new` Hz (torchaudio's filter: 6 zero crossings, rolloff 0.99), so a clip cropped from its start can be cut
    before it is resampled and give the same samples (up to float rounding)."""
    g = math.gcd(int(orig), int(new))
    o, n = int(orig) // g, int(new) // g
    width = math.ceil(6 * o / (min(o, n) * 0.99))
    return ((int(out_len) - 1) // n + 1) * o + 2 * width + o


def crop_window(wave: np.ndarray, max_len: Optional[int], train: bool) -> np.ndarray:
    """`wave` cut to `max_len` samples: from the start, or (`train`) at a random offset drawn from np.random."""
    if max_len is None or wave.shape[0] <= max_len:
        return wave
    start = int(np.random.randint(0, wave.shape[0] - max_len + 1)) if train else 0
    return wave[start : start + max_len]


def load_waveforms(
    batch: list, sample_rate: int, max_seconds: Optional[float], train: bool = False,
    resampler: Optional[Callable[[np.ndarray, int, int], np.ndarray]] = None,
    placeholder_seconds: float = PLACEHOLDER_SECONDS,
) -> list[np.ndarray]:
    """Raw audio samples -> mono float32 arrays at `sample_rate`, at most `max_seconds` long.

    `None` becomes a short silence. In training mode an over-long clip is cropped at a random offset,
    otherwise from its start. `resampler(wave, orig, new)` is torchaudio's in the encoders and the numpy one in
    the exported-model runtime; either way the source rate first goes through `bounded_rate`.
    """
    max_len = int(round(max_seconds * sample_rate)) if max_seconds else None
    silence = int(round(placeholder_seconds * sample_rate))
    if max_len is not None:
        silence = min(silence, max_len)
    waves = []
    for i, item in enumerate(batch):
        if item is None:
            waves.append(np.zeros(silence, dtype=np.float32))
            continue
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"audio sample {i}: expected (waveform, sample_rate) or None, got {type(item).__name__}")
        wave, sr = item
        if not isinstance(sr, (int, np.integer)) or not 0 < int(sr) <= MAX_SAMPLE_RATE:
            raise ValueError(f"audio sample {i}: sample rate must be an int in 1..{MAX_SAMPLE_RATE}, got {sr!r}")
        arr = to_mono_float(wave, i)
        rate = bounded_rate(int(sr), sample_rate)
        if max_len is not None and not train:
            arr = arr[: input_span(max_len, rate, sample_rate)]  # the rest would be resampled and cut off
        if rate != sample_rate:
            if resampler is None:
                raise ValueError(f"audio sample {i}: rate {sr} Hz needs resampling to {sample_rate} Hz; pass a resampler")
            arr = resampler(arr, rate, sample_rate)
        waves.append(np.ascontiguousarray(crop_window(arr, max_len, train), dtype=np.float32))
    return waves
