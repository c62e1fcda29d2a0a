"""Classification demo sets, generated locally and deterministically (no downloads).

Both demos have four classes whose label needs BOTH modalities: one bit comes from the image/audio,
the other from the caption, so either modality alone can reach at most about 50% accuracy
(chance: 25%).

* ``text_image``: real handwritten digits (scikit-learn's ``load_digits``, upscaled to 64x64 PNG).
  Image bit: digit 0-4 ("low") or 5-9 ("high"). Caption bit: the ink colour named in the caption
  is warm (red, orange, ...) or cool (blue, teal, ...). Label e.g. ``high_warm``.
* ``text_audio``: synthesized 1 s, 16 kHz WAV files. Audio bit: tonal (a steady tone or a chirp)
  or noisy (band-limited noise bursts). Caption bit: recorded in the morning or at night.
  Label e.g. ``tonal_night``.

Writers return the rows; `multimodal.data.demos` adds the split and writes the manifest.
"""

from __future__ import annotations

import os

import numpy as np

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


def write_text_image(folder: str, n: int = 480, seed: int = 0) -> list[dict]:
    """Digit images + captions naming an ink colour into `folder`; returns the rows (label needs both)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"))
    picks = rng.choice(len(digits.images), size=n, replace=n > len(digits.images))
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
        rows.append({"text": caption, "image": rel, "label": label, "digit": digit})
    return rows


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


def write_text_audio(folder: str, n: int = 480, seed: int = 0) -> list[dict]:
    """Synthesized clips + captions naming a time of day into `folder`; returns the rows (label needs both)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "audio"))
    rows = []
    for k in range(n):
        kind = ["tone", "chirp", "noise", "noise"][int(rng.integers(4))]
        rel = f"audio/{k:05d}.wav"
        sf.write(os.path.join(folder, rel), _synth_audio(kind, rng), 16000, subtype="PCM_16")
        night = bool(rng.integers(2))
        when = rng.choice(NIGHT if night else MORNING)
        caption = AUDIO_TEMPLATES[rng.integers(len(AUDIO_TEMPLATES))].format(t=when)
        label = f"{'noisy' if kind == 'noise' else 'tonal'}_{'night' if night else 'morning'}"
        rows.append({"text": caption, "audio": rel, "label": label, "sound": kind})
    return rows
