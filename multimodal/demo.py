"""Built-in demo datasets, generated locally and deterministically (no downloads).

Both demos have four classes whose label needs BOTH modalities: one bit comes from the image/audio,
the other from the caption, so either modality alone can reach at most about 50% accuracy
(chance: 25%).

* ``text_image``: real handwritten digits (scikit-learn's ``load_digits``, upscaled to 64x64 PNG).
  Image bit: digit 0-4 ("low") or 5-9 ("high"). Caption bit: the ink colour named in the caption
  is warm (red, orange, ...) or cool (blue, teal, ...). Label e.g. ``high_warm``.
* ``text_audio``: synthesized 1 s, 16 kHz WAV files. Audio bit: tonal (a steady tone or a chirp)
  or noisy (band-limited noise bursts). Caption bit: recorded in the morning or at night.
  Label e.g. ``tonal_night``.

Files go to ``~/.cache/multimodal-finetune/demo/<name>-n<N>-v1/`` (or `root`) with a
``manifest.csv`` holding ``text``, ``image``/``audio`` (relative paths), ``label`` and ``split``
(70% train, 15% validation, 15% test). Generation is written to a temporary folder and renamed,
so several processes may call `make_demo` at once.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

VERSION = "v1"
WARM = ["red", "orange", "crimson", "scarlet", "amber", "vermilion"]
COOL = ["blue", "teal", "navy", "cyan", "azure", "indigo"]
IMAGE_TEMPLATES = [
    "a handwritten digit sketched in {c} ink",
    "scanned number written with a {c} pen",
    "{c} marker on white paper, one numeral",
    "a quick note in {c}, just a single digit",
    "digit drawn with {c} pencil by a student",
]
MORNING = ["early in the morning", "at sunrise", "around breakfast time", "at dawn", "in the morning light"]
NIGHT = ["late at night", "around midnight", "after dark", "in the middle of the night", "at night"]
AUDIO_TEMPLATES = [
    "a sound recorded {t}",
    "field recording made {t} near the station",
    "clip captured {t} on a phone",
    "short sample taken {t}",
    "a recording from {t} in the studio",
]


def default_demo_root() -> str:
    """Where demo data is cached: ``$MULTIMODAL_CACHE`` or ``~/.cache/multimodal-finetune``, plus ``demo``."""
    base = os.environ.get("MULTIMODAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "multimodal-finetune")
    return os.path.join(base, "demo")


def _assign_splits(n: int, rng: np.random.Generator) -> list[str]:
    n_val, n_test = int(round(0.15 * n)), int(round(0.15 * n))
    names = ["test"] * n_test + ["validation"] * n_val + ["train"] * (n - n_val - n_test)
    return [names[i] for i in rng.permutation(n)]


def _write_text_image(folder: str, n: int, seed: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"))
    picks = rng.choice(len(digits.images), size=n, replace=n > len(digits.images))
    splits = _assign_splits(n, rng)
    rows = []
    for k, idx in enumerate(picks):
        digit = int(digits.target[idx])
        pixels = (digits.images[idx] / 16.0 * 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((64, 64), Image.BILINEAR)
        rel = f"images/{k:05d}.png"
        image.save(os.path.join(folder, rel))
        warm = bool(rng.integers(2))
        colour = rng.choice(WARM if warm else COOL)
        caption = IMAGE_TEMPLATES[rng.integers(len(IMAGE_TEMPLATES))].format(c=colour)
        label = f"{'high' if digit >= 5 else 'low'}_{'warm' if warm else 'cool'}"
        rows.append({"text": caption, "image": rel, "label": label, "split": splits[k], "digit": digit})
    _write_csv(os.path.join(folder, "manifest.csv"), rows)


def _synth_audio(kind: str, rng: np.random.Generator, sr: int = 16000, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    if kind == "tone":
        f = rng.uniform(300, 2000)
        wave = np.sin(2 * np.pi * f * t)
    elif kind == "chirp":
        f0, f1 = rng.uniform(200, 600), rng.uniform(1500, 3500)
        if rng.integers(2):
            f0, f1 = f1, f0
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
        wave = np.sin(phase)
    else:  # noise bursts
        wave = np.zeros_like(t)
        for _ in range(int(rng.integers(2, 6))):
            start = int(rng.uniform(0, 0.8) * sr)
            length = int(rng.uniform(0.05, 0.2) * sr)
            burst = rng.standard_normal(min(length, len(t) - start))
            wave[start : start + len(burst)] += burst * np.hanning(len(burst))
    wave = wave * rng.uniform(0.3, 0.9) / (np.abs(wave).max() + 1e-8)
    wave += 0.01 * rng.standard_normal(len(t))
    return wave.astype(np.float32)


def _write_text_audio(folder: str, n: int, seed: int) -> None:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "audio"))
    splits = _assign_splits(n, rng)
    rows = []
    for k in range(n):
        kind = ["tone", "chirp", "noise", "noise"][int(rng.integers(4))]
        rel = f"audio/{k:05d}.wav"
        sf.write(os.path.join(folder, rel), _synth_audio(kind, rng), 16000, subtype="PCM_16")
        night = bool(rng.integers(2))
        when = rng.choice(NIGHT if night else MORNING)
        caption = AUDIO_TEMPLATES[rng.integers(len(AUDIO_TEMPLATES))].format(t=when)
        label = f"{'noisy' if kind == 'noise' else 'tonal'}_{'night' if night else 'morning'}"
        rows.append({"text": caption, "audio": rel, "label": label, "split": splits[k], "sound": kind})
    _write_csv(os.path.join(folder, "manifest.csv"), rows)


def _write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def make_demo(name: str, n: int = 480, root: Optional[str] = None, seed: int = 0) -> str:
    """Generate (once) the demo dataset `name` ("text_image" or "text_audio") and return its manifest path."""
    writers = {"text_image": _write_text_image, "text_audio": _write_text_audio}
    if name not in writers:
        raise ValueError(f"unknown demo {name!r}; choose one of {sorted(writers)}")
    if n < 20:
        raise ValueError(f"demo_size must be at least 20, got {n}")
    root = root or default_demo_root()
    folder = os.path.join(root, f"{name}-n{n}-s{seed}-{VERSION}")
    manifest = os.path.join(folder, "manifest.csv")
    if os.path.exists(manifest):
        return manifest
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=root)
    try:
        staging = os.path.join(tmp, "data")
        os.makedirs(staging)
        writers[name](staging, n, seed)
        try:
            os.rename(staging, folder)
        except OSError:
            if not os.path.exists(manifest):  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
