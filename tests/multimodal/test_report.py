"""Reports: Markdown/HTML with Recall@K curves, confusion matrix and retrieval grids (images and audio)."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
from PIL import Image

from multimodal.report import RetrievalExamples, write_report
from multimodal.retrieval import retrieval_metrics, zero_shot_metrics


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
    metrics = retrieval_metrics(sim, [0, 0, 1, 1, 2, 2, 3, 3], item_name="image")
    examples = RetrievalExamples(
        modality="image",
        text_queries=["a red | thing", "a blue thing"],
        text_results=[paths[:3], paths[1:4]],
        text_correct=[[True, False, False], [False, False, True]],
        item_queries=[paths[0]],
        item_results=[["a red | thing", "other"]],
        item_correct=[[True, False]],
    )
    out = tmp_path / "report"
    md = write_report(str(out), metrics, title="Retrieval", examples=examples, notes=["chance R@1 = 0.25"], html=True)
    text = open(md, encoding="utf-8").read()
    assert "| text_to_image/R@1 |" in text and "chance R@1 = 0.25" in text
    assert "![Recall@K](recall_at_k.png)" in text and "retrieval_examples.png" in text
    assert "✓ a red / thing" in text  # table cells escape the pipe
    assert "recall_curve" not in text  # lists stay in metrics.json only
    for name in ("recall_at_k.png", "retrieval_examples.png"):
        _png_ok(str(out / name))
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<img src='recall_at_k.png'" in html and "&#10003; a red | thing" in html


def test_zero_shot_report_with_confusion_and_audio_grid(tmp_path):
    wav = tmp_path / "tone.wav"
    t = np.arange(8000) / 16000
    sf.write(wav, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    logits = np.array([[2.0, 0.1], [0.3, 0.9], [1.0, 0.0]])
    metrics = zero_shot_metrics(logits, [0, 1, 1], ["tone", "chirp"])
    cm = metrics.pop("confusion_matrix")
    examples = RetrievalExamples(modality="audio", text_queries=["a tone"], text_results=[[str(wav), str(wav)]],
                                 text_correct=[[True, False]])
    md = write_report(str(tmp_path / "r"), metrics, examples=examples, confusion=cm, class_names=["tone", "chirp"])
    text = open(md, encoding="utf-8").read()
    assert "| top1 |" in text and "confusion_matrix.png" in text
    assert not os.path.exists(tmp_path / "r" / "recall_at_k.png")  # no curves in a classification report
    _png_ok(str(tmp_path / "r" / "confusion_matrix.png"))
    _png_ok(str(tmp_path / "r" / "retrieval_examples.png"))
