"""A training run's report opens with what a reader asks first: the headline table (fused, each single modality,
chance; validation and test), the kept epoch, the data, the method and its parameters, and the config; every
metric is named in plain words. The HTML is checked in a real headless browser."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from multimodal.evaluation.glossary import describe_metric, metric_label
from multimodal.evaluation.plots import plot_training_curves
from multimodal.evaluation.report import EvalResult, write_result
from multimodal.evaluation.run_report import describe_method, run_sections, skip_note

CONFIG = {"model": {"encoders": {"text": "text:minilm", "image": "image:lite0"}, "fusion": "concat", "peft": None},
          "train": {"epochs": 12, "batch_size": 32, "head_lr": 0.002, "encoder_lr": 2e-5, "mixed_precision": "no",
                    "seed": 42, "linear_probe": False}}


def _split(f1, acc, n=20, confusion=None):
    out = {"accuracy": acc, "macro_f1": f1, "loss": 0.3, "num_examples": n, "num_unique_examples": n, "num_classes": 2}
    if confusion is not None:
        out.update(confusion_matrix=confusion, class_names=["cat", "dog"])
    return out


def _run(saturated=False):
    history = [{"epoch": 1, "step": 5, "loss": 0.50, "macro_f1": 1.0 if saturated else 0.7, "num_examples": 20},
               {"epoch": 2, "step": 10, "loss": 0.10, "macro_f1": 1.0 if saturated else 0.9, "num_examples": 20}]
    return {
        "task": "single_label", "modalities": ["image", "text"], "fusion": "concat", "labels": ["cat", "dog"],
        "encoders": CONFIG["model"]["encoders"], "split_sizes": {"train": 160, "validation": 20, "test": 28},
        "split_notes": ["validation and test carved out of data.csv (seed 0)"],
        "skipped": {"train": {"total": 0, "by_reason": {}, "examples": []},
                    "validation": {"total": 0, "by_reason": {}, "examples": []},
                    "test": {"total": 2, "by_reason": {"label": 2},
                             "examples": ["t.csv: row 3 (line 4): unknown label 'dgo'; did you mean 'dog'?"]}},
        "frozen": ["image", "text"], "best_epoch": 2, "epochs_run": 6, "stopped_early": True,
        "metric_for_best": "macro_f1", "train_time_s": 12.5, "wall_time_s": 30.25,
        "parameters": {"total": 1000, "trainable": 250, "encoders_total": 700, "encoders_trainable": 0},
        "validation": _split(0.9, 0.9, 20, [[9, 1], [1, 9]]), "test": _split(0.8, 0.82, 28, [[12, 2], [3, 11]]),
        "baselines": {"image": {"validation": _split(0.6, 0.65), "test": _split(0.55, 0.6)},
                      "text": {"validation": _split(0.7, 0.7), "test": _split(0.68, 0.7)}},
        "chance": {"majority_accuracy": 0.5, "majority_macro_f1": 0.3333, "uniform_accuracy": 0.5},
        "history": history,
    }


def test_headline_kept_epoch_data_and_method():
    headline, kept, data, method, config = run_sections(_run(), CONFIG)
    assert headline.header == ["model", "validation macro-F1", "test macro-F1", "validation accuracy", "test accuracy"]
    assert headline.rows == [
        ["fused (image + text)", "0.9000", "0.8000", "0.9000", "0.8200"],
        ["image only", "0.6000", "0.5500", "0.6500", "0.6000"],
        ["text only", "0.7000", "0.6800", "0.7000", "0.7000"],
        ["chance: always the majority training class", "–", "0.3333", "–", "0.5000"],
        ["chance: uniform random guess", "–", "–", "–", "0.5000"],
    ]
    assert "Chance levels use the training labels alone" in headline.paragraphs[0]
    both = {**_run(), "chance_by_split": {"validation": {"majority_accuracy": 0.45, "uniform_accuracy": 0.5},
                                          "test": {"majority_accuracy": 0.5, "uniform_accuracy": 0.5}}}
    assert run_sections(both)[0].rows[-2] == ["chance: always the majority training class", "–", "–", "0.4500", "0.5000"]
    assert kept.paragraphs == ["Epoch 2; training stopped early after epoch 6. It was kept for the best validation "
                               "macro-F1 (ties go to the lower validation loss): macro-F1 0.9000, loss 0.1000."]
    assert data.header == ["split", "rows", "class cat", "class dog", "skipped"]
    assert data.rows == [["train", "160", "–", "–", "0"], ["validation", "20", "10", "10", "0"],
                         ["test", "28", "14", "14", "2 rows skipped (2 label)"]]
    assert any("unknown label 'dgo'" in p for p in data.paragraphs)
    assert method.paragraphs[0].startswith("Frozen encoders, only the fusion and head trained, concat fusion")
    assert "Trainable parameters: 250 of 1,000 (25.00%)" in method.paragraphs[1]
    assert config.code.startswith("model:") and config.collapsed


def test_skip_note_counts_the_rows_a_split_lost():
    skip = {"total": 2, "by_reason": {"label": 1, "image": 1}}
    assert skip_note(skip, rows=28) == "2 of 30 rows skipped (1 image, 1 label)"
    assert skip_note(skip) == "2 rows skipped (1 image, 1 label)"
    assert skip_note({"total": 0, "by_reason": {}}, 30) == "" and skip_note(None) == ""
    assert skip_note({"total": 1, "by_reason": {"label": 1}}) == "1 row skipped (1 label)"
    assert skip_note({"total": 1, "by_reason": {"label": 1}}, 11) == "1 of 12 rows skipped (1 label)"


def test_recorded_class_counts_and_saturation_warning():
    run = _run(saturated=True)
    run["class_counts"] = {"train": [70, 90], "validation": [10, 10], "test": [14, 14]}
    _, kept, data, *_ = run_sections(run)
    assert data.rows[0] == ["train", "160", "70", "90", "0"]
    assert kept.paragraphs[1].startswith("Warning: validation macro_f1 is 1, its best possible value, on only 20 rows")
    probe = {**_run(), "probe": {"C": 0.1, "sweep": [{}, {}, {}], "refit_on_validation": True}}
    assert run_sections(probe)[1].paragraphs == ["Linear probe: C=0.1 chosen by validation macro-F1 among 3 values, "
                                                 "then refitted on train + validation."]


def test_method_in_words():
    run = _run()
    assert describe_method({"train": {"linear_probe": True}}, run).startswith("a linear probe")
    lora = describe_method({"model": {"peft": {"r": 8}}, "train": {"probe_init": True}}, {**run, "frozen": []})
    assert lora.startswith("LoRA adapters (rank 8)") and "LP-FT (probe first)" in lora
    assert describe_method({}, {**run, "frozen": []}).startswith("full fine-tuning")
    assert describe_method({}, {**run, "frozen": ["image"]}).startswith("image frozen, the other encoders fine-tuned")


def test_retrieval_and_regression_headlines():
    retrieval = {"task": "retrieval", "modalities": ["image", "text"], "metric_for_best": "rsum",
                 "validation": {"rsum": 2.0, "text_to_image/R@1": 0.3, "chance/text_to_image/R@1": 0.05},
                 "test": {"rsum": 1.8, "text_to_image/R@1": 0.25, "chance/text_to_image/R@1": 0.04}}
    headline = run_sections(retrieval)[0]
    assert headline.header == ["model", "validation R-sum", "test R-sum", "validation text → image Recall@1",
                               "test text → image Recall@1"]
    assert headline.rows[-1] == ["chance: random ranking", "–", "–", "0.0500", "0.0400"]
    regression = {"task": "regression", "modalities": ["text"], "metric_for_best": "mse",
                  "test": {"mse": 0.5, "mae": 0.4}, "chance": {"mean_mse": 1.0, "mean_mae": 0.8}}
    headline = run_sections(regression)[0]
    assert headline.rows == [["model (text)", "0.5000", "0.4000"], ["chance: always the training mean", "1.0000", "0.8000"]]
    assert "MSE and MAE: lower is better" in headline.paragraphs[0]


def test_every_reported_metric_has_plain_words():
    for key in ("accuracy", "macro_f1", "num_unique_examples", "majority_accuracy", "uniform_accuracy", "auroc",
                "text_to_image/R@10", "image_to_text/mAP@10", "chance/text_to_image/R@1", "rsum", "num_image"):
        name, meaning = describe_metric(key)
        assert name and len(meaning) > 20, key
    assert "rarer in this split than in training" in describe_metric("majority_accuracy")[1]
    assert "scored twice" in describe_metric("num_unique_examples")[1]
    assert metric_label("text_to_image/R@5") == "text → image Recall@5" and metric_label("custom") == "custom"
    assert describe_metric("something_new") is None


@pytest.fixture
def training_report(tmp_path):
    """report.md and report.html of a run, with the plots a run draws."""
    run = _run(saturated=True)
    curves = plot_training_curves([{"step": s, "loss": 1 / s} for s in range(1, 11)], run["history"],
                                  str(tmp_path / "training_curves.png"), metric="macro_f1", best_epoch=2)
    test = run["test"]
    result = EvalResult(dict(test), confusion=test["confusion_matrix"], class_names=test["class_names"],
                        notes=["Task single_label; test split (28 rows)."], run=run, config=CONFIG)
    write_result(str(tmp_path), result, "image–text single_label: test", html=True,
                 extra_plots=[("Training curves", curves)])
    return tmp_path


def test_the_report_opens_with_the_run_and_names_every_metric(training_report):
    md = (training_report / "report.md").read_text()
    order = [md.index(h) for h in ("## Headline", "## Kept model", "## Data", "## Method", "## Config",
                                   "## All metrics of this split", "## Confusion matrix", "## Training curves")]
    assert order == sorted(order)
    assert "| fused (image + text) | 0.9000 | 0.8000 | 0.9000 | 0.8200 |" in md
    assert "| num_unique_examples | 28 | distinct rows: distinct dataset rows" in md
    html = (training_report / "report.html").read_text()
    assert "<h2>Headline</h2>" in html and "<details><summary><h2>Config</h2></summary>" in html
    assert "Warning: validation macro_f1 is 1" in html


def test_training_report_in_a_browser(training_report, browser_check):
    page = browser_check(training_report / "report.html")
    assert sorted(src for src, _ in page.images) == ["confusion_matrix.png", "training_curves.png"]
    assert all(loaded for _, loaded in page.images), page.images
    assert page.errors == []
    shot = Image.open(io.BytesIO(page.screenshot))
    assert shot.size[1] > 1000 and np.asarray(shot.convert("L")).std() > 10  # a long page with content on it
