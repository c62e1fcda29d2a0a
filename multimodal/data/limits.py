"""How much work one sample may cause (`MediaLimits`), and the error for a sample over a limit."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from encoders.samples import MAX_IMAGE_ASPECT, MAX_SAMPLE_RATE, MAX_TEXT_CHARS

# Formats whose Pillow plugins decode in-process; anything else (EPS runs Ghostscript, and many rarely used
# plugins are lightly tested) is refused before a plugin is chosen.
ALLOWED_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


class MediaLimitError(ValueError):
    """A sample is refused before it is decoded: a format outside the allow-list, or over a `MediaLimits` bound."""


@dataclass(frozen=True)
class MediaLimits:
    """Bounds on one sample; the ``data.*`` config keys and the CLI/server options of the same names set them."""

    # A 16 Mpx RGBA or 16-bit image peaks at about 140 MB while it is converted to RGB; larger JPEGs are decoded
    # at 1/2, 1/4 or 1/8 scale instead of being refused.
    max_image_pixels: int = 16_000_000
    max_image_aspect: float = MAX_IMAGE_ASPECT  # longest side / shortest side
    max_audio_seconds: float = 600.0  # from the file header, before decoding
    max_audio_rate: int = 192_000
    max_text_chars: int = MAX_TEXT_CHARS  # texts are cut to this before tokenising
    # Decode only this much audio (the model's clip length); None: the whole file.
    audio_window_seconds: Optional[float] = None
    # Decode JPEGs at 1/2, 1/4 or 1/8 scale while the shorter side stays at least this many pixels (the side the
    # eval-mode preprocessor resizes to); None: full size.
    image_draft_side: Optional[int] = None

    def __post_init__(self) -> None:
        if self.max_image_pixels < 1 or self.max_image_aspect < 1 or self.max_audio_seconds <= 0:
            raise ValueError(f"media limits must be positive (aspect at least 1): {self}")
        if not 0 < self.max_audio_rate <= MAX_SAMPLE_RATE or self.max_text_chars < 1:
            raise ValueError(f"max_audio_rate must be in 1..{MAX_SAMPLE_RATE} and max_text_chars positive: {self}")

    @classmethod
    def from_config(cls, config: Any) -> MediaLimits:
        """The limits a `DataConfig` (or any object with some of the field names as attributes, e.g. parsed
        command-line options) sets; the others keep their defaults."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("audio_window_seconds", "image_draft_side")]
        return cls(**{n: getattr(config, n) for n in names if getattr(config, n, None) is not None})

    def with_window(self, seconds: Optional[float]) -> MediaLimits:
        """These limits, decoding at most `seconds` of audio per file (None: the whole file)."""
        return dataclasses.replace(self, audio_window_seconds=float(seconds) if seconds else None)

    def with_draft(self, side: Optional[int]) -> MediaLimits:
        """These limits, decoding JPEGs at reduced scale down to a shorter side of `side` pixels (None: full size)."""
        return dataclasses.replace(self, image_draft_side=int(side) if side else None)


DEFAULT_LIMITS = MediaLimits()


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """``--max-image-pixels`` ... ``--max-text-chars``: the `MediaLimits` of a command line (default: built-in)."""
    group = parser.add_argument_group("limits on one sample (a sample over one is a bad input)")
    group.add_argument("--max-image-pixels", type=int, default=None,
                       help=f"default {DEFAULT_LIMITS.max_image_pixels:,}; larger JPEGs decode at reduced scale")
    group.add_argument("--max-image-aspect", type=float, default=None,
                       help=f"longest side / shortest side, default {DEFAULT_LIMITS.max_image_aspect:g}")
    group.add_argument("--max-audio-seconds", type=float, default=None,
                       help=f"from the file header, default {DEFAULT_LIMITS.max_audio_seconds:g}")
    group.add_argument("--max-audio-rate", type=int, default=None, help=f"default {DEFAULT_LIMITS.max_audio_rate:,} Hz")
    group.add_argument("--max-text-chars", type=int, default=None,
                       help=f"texts are cut to this before tokenising, default {DEFAULT_LIMITS.max_text_chars:,}")


def limits_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MediaLimits:
    """The `MediaLimits` of options added by `add_limit_options`; a value out of range is a usage error."""
    try:
        return MediaLimits.from_config(args)
    except ValueError as err:
        parser.error(str(err))
        raise  # parser.error exits
