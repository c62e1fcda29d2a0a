"""Built-in demos: generated once, split by item, and the image-audio pairs really encode the same digit."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from multimodal.data import get_demo, list_demos, make_demo
from multimodal.data.demo_pairs import BACKGROUNDS, DIGIT_WORDS, DTMF_HZ, PAIR_COLOURS, dtmf_clip


@pytest.mark.parametrize("name", [d.name for d in list_demos()])
def test_every_demo_generates_a_split_manifest(tmp_path, name):
    demo = get_demo(name)
    manifest = make_demo(name, size=24, root=str(tmp_path))
    frame = pd.read_csv(manifest)
    assert set(frame["split"]) <= {"train", "validation", "test"} and "train" in set(frame["split"])
    if demo.group_column:  # an item's rows (its captions) never straddle two splits
        assert (frame.groupby(demo.group_column)["split"].nunique() == 1).all()
    for column in ("image", "audio"):
        if column in frame:
            assert all(os.path.exists(os.path.join(os.path.dirname(manifest), p)) for p in frame[column])
    assert make_demo(name, size=24, root=str(tmp_path)) == manifest  # generated once, then reused


def _peaks(wave: np.ndarray, sr: int) -> set[int]:
    """The two keypad frequencies with the most energy in the clip."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    freqs = np.fft.rfftfreq(len(wave), 1 / sr)
    keypad = sorted({f for pair in DTMF_HZ.values() for f in pair})
    energy = {f: spectrum[np.abs(freqs - f) < 5].max() for f in keypad}
    return set(sorted(keypad, key=energy.get)[-2:])


def _beeps(wave: np.ndarray, sr: int) -> list[int]:
    """Lengths (in 10 ms frames) of the loud stretches of a clip."""
    frame = sr // 100
    energy = np.array([np.abs(wave[i : i + frame]).mean() for i in range(0, len(wave) - frame, frame)])
    on = np.concatenate([[False], energy > 0.5 * energy.max(), [False]])
    starts, ends = np.flatnonzero(~on[:-1] & on[1:]), np.flatnonzero(on[:-1] & ~on[1:])
    return (ends - starts).tolist()


def test_image_audio_pairs_encode_the_same_digit(tmp_path):
    manifest = make_demo("image_audio_pairs", size=30, root=str(tmp_path))
    frame = pd.read_csv(manifest)
    base = os.path.dirname(manifest)
    for row in frame.itertuples():
        digit = DIGIT_WORDS.index(row.label)
        wave, sr = sf.read(os.path.join(base, row.audio))
        assert _peaks(wave, sr) == set(DTMF_HZ[digit]), row  # the clip plays this digit's two keypad tones
        beeps = _beeps(wave, sr)
        assert len(beeps) == PAIR_COLOURS.index(row.ink) + 1, row  # red/green/blue ink: 1/2/3 beeps
        assert all(abs(n - (30 if row.size == "large" else 12)) <= 2 for n in beeps), (row, beeps)  # 0.3 s / 0.12 s
        image = np.asarray(Image.open(os.path.join(base, row.image)).convert("RGB"), dtype=np.float32)
        corner = image[0, -1] if row.size == "large" else None  # large digits fill the canvas; a corner is background
        assert corner is None or np.abs(corner - np.array(BACKGROUNDS[row.background])).max() < 40, row


def test_dtmf_clip_backdrops_differ():
    clips = {b: dtmf_clip(5, 2, 0.12, b, np.random.default_rng(1)) for b in ("silence", "hiss", "hum", "rumble")}
    quiet = {b: float(np.abs(c[-2000:]).mean()) for b, c in clips.items()}  # after the beeps
    assert quiet["silence"] < 0.01 < min(quiet["hiss"], quiet["hum"], quiet["rumble"])
    assert len({round(v, 3) for v in quiet.values()}) == 4
