"""Reports: Markdown/HTML with Recall@K curves, confusion matrix and retrieval grids (images and audio)."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
from PIL import Image

from multimodal.evaluation.metrics import classification_metrics, confusion, retrieval_metrics
from multimodal.evaluation.report import RetrievalExamples, write_report


def _png_ok(path: str) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
        assert np.asarray(img.convert("L")).std() > 1  # not a blank canvas


def test_retrieval_report_with_image_grid(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    sim = rng.standard_normal((8, 4))
    metrics = retrieval_metrics(sim, [(q, q // 2) for q in range(8)], names=("text", "image"))
    examples = [
        RetrievalExamples("text", "image", queries=["a red | thing", "a blue thing"], results=[paths[:3], paths[1:4]],
                          correct=[[True, False, False], [False, False, True]]),
        RetrievalExamples("image", "text", queries=[paths[0]], results=[["a red | thing", "other"]],
                          correct=[[True, False]]),
    ]
    out = tmp_path / "report"
    md = write_report(str(out), metrics, title="Retrieval", examples=examples, notes=["chance R@1 = 0.25"], html=True)
    text = open(md, encoding="utf-8").read()
    assert "| text_to_image/R@1 |" in text and "chance R@1 = 0.25" in text
    assert "![Recall@K](recall_at_k.png)" in text and "retrieval_text_to_image.png" in text
    assert "✓ a red / thing" in text  # table cells escape the pipe
    assert "recall_curve" not in text  # lists stay in metrics.json only
    for name in ("recall_at_k.png", "retrieval_text_to_image.png"):
        _png_ok(str(out / name))
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<img src='recall_at_k.png'" in html and "&#10003; a red | thing" in html


def test_zero_shot_report_with_confusion_and_audio_grid(tmp_path):
    wav = tmp_path / "tone.wav"
    t = np.arange(8000) / 16000
    sf.write(wav, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    logits = np.array([[2.0, 0.1], [0.3, 0.9], [1.0, 0.0]])
    metrics = classification_metrics(logits, [0, 1, 1], "single_label", class_names=["tone", "chirp"])
    cm = confusion(logits, [0, 1, 1])
    examples = [RetrievalExamples("text", "audio", queries=["a tone"], results=[[str(wav), str(wav)]],
                                  correct=[[True, False]])]
    md = write_report(str(tmp_path / "r"), metrics, examples=examples, confusion=cm, class_names=["tone", "chirp"])
    text = open(md, encoding="utf-8").read()
    assert "| accuracy |" in text and "confusion_matrix.png" in text
    assert not os.path.exists(tmp_path / "r" / "recall_at_k.png")  # no curves in a classification report
    _png_ok(str(tmp_path / "r" / "confusion_matrix.png"))
    _png_ok(str(tmp_path / "r" / "retrieval_text_to_audio.png"))


def test_image_to_audio_grid_shows_query_thumbnails(tmp_path):
    rng = np.random.default_rng(1)
    img = tmp_path / "q.png"
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(img)
    wav = tmp_path / "a.wav"
    sf.write(wav, rng.standard_normal(8000).astype(np.float32) * 0.1, 16000)
    examples = [RetrievalExamples("image", "audio", queries=[str(img)], results=[[str(wav)]], correct=[[True]])]
    write_report(str(tmp_path / "r"), {"rsum": 1.0}, examples=examples)
    _png_ok(str(tmp_path / "r" / "retrieval_image_to_audio.png"))
