"""The hostile-media corpus (tests/hostile_corpus.py) through the decode layer and the manifest path: every file is
accepted or refused as it must be, within 200 MB and 2 s of CPU each. (That an EPS runs no Ghostscript through
the manifest path, the predictor and the server: tests/multimodal/deploy/test_hostile_inputs.py.)"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from multimodal.data import BadSampleError, MultimodalDataset
from multimodal.data.limits import MediaLimitError, MediaLimits
from multimodal.data.media import load_audio, load_image, load_text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def corpus(hostile_corpus):
    return hostile_corpus


def test_every_case_is_accepted_or_refused_within_200_mb_and_2_s(corpus, tmp_path):
    """Each case is decoded and preprocessed (as the server does) in its own forked child; the peak memory growth
    and CPU time of that child are the case's cost."""
    folder, _ = corpus
    out = tmp_path / "costs.json"
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "hostile_corpus.py"), folder, str(out)], check=True,
                   env=env, timeout=600)
    results = json.loads(out.read_text())
    assert len(results) >= 30
    for name, r in results.items():
        accepted = r["outcome"] == "accepted"
        assert accepted == (r["expect"] == "accept"), (name, r)
        assert r["because"] in r["message"], (name, r)
        assert r["peak_mb"] < 200 and r["cpu_s"] < 2.0, (name, r)


def test_the_manifest_path_counts_each_refused_file_as_a_skip(corpus, tmp_path):
    folder, cases = corpus
    files = [c for c in cases if c.modality in ("image", "audio")]
    rows = [{"image": c.path if c.modality == "image" else "", "audio": c.path if c.modality == "audio" else "",
             "label": "a" if i % 2 else "b"} for i, c in enumerate(files)]
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "audio", "label"])
        writer.writeheader()
        writer.writerows(rows)
    data = MultimodalDataset(rows, {"image": "image", "audio": "audio"}, "label", base_dir=str(tmp_path),
                             source=str(manifest), on_bad_sample="skip")
    refused = [i + 1 for i, c in enumerate(files) if c.expect == "refuse"]
    assert sorted(data.skipped.rows) == refused
    assert len(data) == len(files) - len(refused)
    for k in range(len(data)):  # the accepted files decode through __getitem__ too
        item = data[k]
        assert "skipped" not in item and (item["image"] is not None or item["audio"] is not None)
    with pytest.raises(BadSampleError, match=r"m.csv: row 1 \(line 2\): image column 'image' .*x.eps.*looks like EPS"):
        MultimodalDataset(rows[:1], {"image": "image", "audio": "audio"}, "label", source=str(manifest))


def test_limits_are_options_and_name_themselves(corpus):
    folder, _ = corpus
    wide = os.path.join(folder, "png_1x5000.png")
    with pytest.raises(MediaLimitError, match=r"5000:1; the limit is 32:1 \(max_image_aspect\)"):
        load_image(wide)
    assert load_image(wide, limits=MediaLimits(max_image_aspect=6000)).size == (1, 5000)
    with pytest.raises(MediaLimitError, match="max_image_pixels"):
        load_image(os.path.join(folder, "jpeg_6000x6000.jpg"), limits=MediaLimits(max_image_pixels=100_000))
    assert load_image(os.path.join(folder, "jpeg_6000x6000.jpg")).size == (3000, 3000)  # libjpeg's 1/2 scale
    flac = os.path.join(folder, "silence_300s.flac")
    with pytest.raises(MediaLimitError, match="max_audio_seconds"):
        load_audio(flac, limits=MediaLimits(max_audio_seconds=60))
    wave, rate = load_audio(flac, limits=MediaLimits().with_window(2.0))
    assert rate == 48000 and 96000 <= len(wave) < 110000  # the window plus a small margin, not 300 s
    assert len(load_text("x" * 200_000)) == 100_000 and load_text("abc", MediaLimits(max_text_chars=2)) == "ab"


def test_truncated_wav_bytes_are_refused_like_a_truncated_wav_file(corpus):
    folder, _ = corpus
    path = os.path.join(folder, "wav_truncated.wav")
    with open(path, "rb") as f:
        data = f.read()
    with pytest.raises(ValueError, match="truncated: its header declares 16000 frames, the file holds 4000"):
        load_audio({"bytes": data})
    with pytest.raises(ValueError, match="truncated"):
        load_audio(path)
