"""Decoding audio files (paths or in-memory bytes) within `multimodal.data.media.MediaLimits`: the header is
checked first (`soundfile.info`: duration, rate, channels; a WAV data chunk shorter than its header says), then
only the clip window is decoded, block by block, into one mono float32 array."""

from __future__ import annotations

import io
import math
import os
import struct
from typing import Any, BinaryIO, Optional, Union

import numpy as np
import soundfile as sf

from multimodal.data.limits import MediaLimitError, MediaLimits

BLOCK_FRAMES = 1 << 16
MAX_CHANNELS = 8  # what `encoders.samples.to_mono_float` takes


def wav_truncation(source: Union[str, BinaryIO]) -> Optional[str]:
    """For a RIFF/WAVE file (a path or a seekable binary file) whose data chunk is shorter than its header says
    (a copy or write cut short), the message saying so; None for complete files, other formats and WAVs that
    leave the length open (0 or -1)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            message = wav_truncation(f)
        return message and f"audio file {os.fspath(source)!r} {message}"
    source.seek(0, os.SEEK_END)
    size = source.tell()
    source.seek(0)
    head = source.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order = "<" if head[:4] == b"RIFF" else ">"
    pos, block = 12, 0
    while pos + 8 <= size:
        source.seek(pos)
        chunk = source.read(16)
        name, length = chunk[:4], struct.unpack(order + "I", chunk[4:8])[0]
        if name == b"fmt " and len(chunk) >= 16:
            source.seek(pos + 8 + 12)
            block = struct.unpack(order + "H", source.read(2))[0]
        if name == b"data":
            held = size - pos - 8
            if length in (0, 0xFFFFFFFF) or held >= length:
                return None
            if block:
                return (f"is truncated: its header declares {length // block} frames, the file holds "
                        f"{held // block} ({held / length:.0%})")
            return f"is truncated: {held} of the {length} bytes of audio data are there"
        pos += 8 + length + (length & 1)
    return None


def _describe(source: Any) -> str:
    return f"audio file {os.fspath(source)!r}" if isinstance(source, (str, os.PathLike)) else "audio bytes"


def _checked_info(source: Any, limits: MediaLimits) -> Any:
    """`soundfile.info` of `source`, refused when empty, cut short or over a limit; nothing is decoded."""
    what = _describe(source)
    cut = wav_truncation(source)
    if cut:
        raise ValueError(cut if cut.startswith("audio file") else f"{what} {cut}")  # libsndfile reads the rest silently
    if isinstance(source, io.BytesIO):
        source.seek(0)
    info = sf.info(source)
    if info.frames <= 0:
        raise ValueError(f"{what} is empty")
    if not 0 < info.samplerate <= limits.max_audio_rate:
        raise MediaLimitError(f"{what}: sampling rate {info.samplerate} Hz is outside 1..{limits.max_audio_rate} "
                              "(max_audio_rate)")
    if not 0 < info.channels <= MAX_CHANNELS:
        raise MediaLimitError(f"{what} has {info.channels} channels; at most {MAX_CHANNELS} are read")
    if info.frames / info.samplerate > limits.max_audio_seconds:
        raise MediaLimitError(f"{what} is {info.frames / info.samplerate:.1f} s long; the limit is "
                              f"{limits.max_audio_seconds:g} s (max_audio_seconds)")
    return info


def _window(frames: int, rate: int, seconds: Optional[float], seed: Optional[int]) -> tuple[int, int]:
    """(start, count) of the frames to decode: everything, or the clip window plus a margin that covers the
    resampling filter and a rate moved by `encoders.samples.bounded_rate` (at most 1%)."""
    if not seconds:
        return 0, frames
    count = math.ceil(seconds * rate)
    count = min(frames, count + count // 50 + rate // 10 + 2048)
    if seed is None or count >= frames:
        return 0, count
    return int(np.random.default_rng([int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, frames]).integers(0, frames - count + 1)), count


def read_audio(source: Any, limits: MediaLimits, seed: Optional[int] = None, ends_only: bool = False) -> tuple[np.ndarray, int]:
    """``(mono float32 waveform, sample_rate)`` of an audio file within `limits` (`ends_only`: only check that its
    first and last frames decode, return an empty waveform)."""
    info = _checked_info(source, limits)
    what = _describe(source)
    if isinstance(source, io.BytesIO):
        source.seek(0)
    with sf.SoundFile(source) as f:
        if ends_only:  # a compressed file cut short fails at its end
            try:
                f.read(min(info.frames, 1024), dtype="float32")
                f.seek(max(0, info.frames - 1024))
                f.read(1024, dtype="float32")
            except RuntimeError as err:  # soundfile's LibsndfileError
                raise ValueError(f"{what} cannot be decoded up to its last frames ({err}); is it cut short?") from None
            return np.zeros(0, dtype=np.float32), int(info.samplerate)
        start, count = _window(info.frames, info.samplerate, limits.audio_window_seconds, seed)
        wave = np.empty(count, dtype=np.float32)
        got = 0
        if start:
            f.seek(start)
        for block in f.blocks(blocksize=BLOCK_FRAMES, frames=count, dtype="float32", always_2d=True):
            wave[got : got + len(block)] = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
            got += len(block)
    if got < count - max(4096, count // 100):  # lossy decoders may end a little before the header's estimate
        raise ValueError(f"{what} ends after {got + start} of the {info.frames} frames its header declares; is it cut short?")
    if got == 0:
        raise ValueError(f"{what} holds no decodable frames")
    return wave[:got], int(info.samplerate)
