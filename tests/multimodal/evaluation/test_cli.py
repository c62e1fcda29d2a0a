"""The evaluate CLI and `evaluate_manifest`: the task's own metrics on a manifest, cached towers, zero-shot,
classification with the training label order, errors that name the row."""

from __future__ import annotations

import importlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from encoders import create_encoder
from fusion import create_fusion
from multimodal import DualEncoder, MultimodalModel, TaskHead
from multimodal.evaluation.cli import evaluate_manifest, main
from multimodal.evaluation.metrics import retrieval_metrics
from multimodal.tasks.retrieval import read_templates

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}


def _tiny_model(tiny_text_dir: str) -> DualEncoder:
    torch.manual_seed(0)
    encoders = {
        "text": create_encoder(f"text:{tiny_text_dir}"),
        "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32),
    }
    return DualEncoder(encoders, embed_dim=16)


def _colour_images(folder, n_per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    out = []
    for name, rgb in COLOURS.items():
        for i in range(n_per_class):
            arr = np.clip(np.array(rgb) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            path = os.path.join(folder, f"{name}{seed}_{i}.png")
            Image.fromarray(arr).save(path)
            out.append((path, name))
    return out


def _write_csv(path, rows: list[dict]) -> str:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_retrieval_metrics_equal_an_independent_computation(tmp_path, tiny_text_dir):
    model = _tiny_model(tiny_text_dir).eval()
    items = _colour_images(tmp_path / "img", 2, seed=1)
    rows = [{"image": os.path.basename(p), "text": f"a {c} square number {i % 2}"} for i, (p, c) in enumerate(items)]
    rows += [{"image": os.path.basename(p), "text": f"another caption {i}"} for i, (p, _) in enumerate(items[:3])]
    manifest = _write_csv(tmp_path / "img" / "pairs.csv", rows)
    result = evaluate_manifest(model, manifest, "retrieval", label_column=None, batch_size=4, show_progress=False)
    m = result.metrics
    assert m["num_image"] == 8 and m["num_text"] == 11 and m["image_to_text/num_queries"] == 8
    # the same numbers from embeddings computed here, one tower at a time
    paths = [p for p, _ in items]
    texts = list(dict.fromkeys(r["text"] for r in rows))
    with torch.no_grad():
        img = model.encode("image", model.encoders["image"].preprocess([Image.open(p) for p in paths]))
        txt = model.encode("text", model.encoders["text"].preprocess(texts))
    pairs = [(texts.index(r["text"]), paths.index(str(tmp_path / "img" / r["image"]))) for r in rows]
    expected = retrieval_metrics(txt @ img.t(), pairs, names=("text", "image"))
    for key in ("text_to_image/R@1", "text_to_image/R@5", "image_to_text/R@1", "text_to_image/median_rank",
                "image_to_text/mAP@10", "rsum"):
        assert m[key] == pytest.approx(expected[key], abs=1e-6), key
    assert len(result.examples) == 2 and all(len(r) == 5 for r in result.examples[0].results)
    # a frozen tower read from the feature cache gives the same metrics
    model.freeze_encoders(["image"])
    cached = evaluate_manifest(model, manifest, "retrieval", label_column=None, batch_size=4,
                               cache_dir=str(tmp_path / "cache"), show_progress=False)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert cached.metrics["text_to_image/R@1"] == pytest.approx(m["text_to_image/R@1"], abs=1e-6)


def test_zero_shot_learns_above_chance(tmp_path, tiny_text_dir):
    model = _tiny_model(tiny_text_dir)
    model.freeze_encoders()  # towers locked: only projections + temperature train
    train = _colour_images(tmp_path / "train", 6, seed=0)
    test = _colour_images(tmp_path / "test", 5, seed=1)
    text_feats = model.encoders["text"]
    image_feats = model.encoders["image"]
    with torch.no_grad():
        img_out = image_feats(image_feats.preprocess([Image.open(p) for p, _ in train]))
        txt_out = text_feats(text_feats.preprocess([f"a photo of a {c}." for _, c in train]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(60):
        out = model(features={"image": img_out, "text": txt_out})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0]
    model.eval()
    manifest = _write_csv(tmp_path / "test" / "zs.csv", [{"image": p, "text": f"item {i}", "label": c}
                                                         for i, (p, c) in enumerate(test)])
    metrics = evaluate_manifest(model, manifest, "zero_shot", templates=["a photo of a {}.", "a picture of a {}."],
                                show_progress=False).metrics
    assert metrics["num_examples"] == 20 and metrics["num_classes"] == 4 and metrics["modality"] == "image"
    assert metrics["accuracy"] >= 0.6, metrics  # well above chance (0.25)
    assert metrics["macro_f1"] > 0.4


def test_templates_file_and_validation(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# comment\nthe sound of a {}.\n\na {} noise\n")
    assert read_templates([str(path)], "audio") == ["the sound of a {}.", "a {} noise"]
    assert read_templates(None, "audio")[0] == "the sound of a {}."
    with pytest.raises(ValueError, match="placeholder"):
        read_templates(["no slot"], "image")


def test_cli_on_saved_model(tmp_path, tiny_text_dir):
    model = _tiny_model(tiny_text_dir)
    model.save_pretrained(tmp_path / "model")
    items = _colour_images(tmp_path / "data", 2, seed=3)
    rows = []
    for p, c in items:
        rows += [{"image": os.path.basename(p), "text": f"a {c} picture", "label": c},
                 {"image": os.path.basename(p), "text": f"something {c}", "label": c}]
    manifest = _write_csv(tmp_path / "data" / "test.csv", rows)
    # the CLI entry point (console script `multimodal-evaluate`), in-process to keep the suite fast
    assert main(["--model", str(tmp_path / "model"), "--data", manifest, "--task", "retrieval",
                 "--output", str(tmp_path / "eval"), "--batch-size", "4", "--html"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # two images per colour share their captions: identical captions are one entry each (8 distinct texts)
    assert metrics["task"] == "retrieval" and metrics["num_image"] == 8 and metrics["num_text"] == 8
    for key in ("text_to_image/R@1", "text_to_image/R@5", "text_to_image/R@10", "image_to_text/R@1",
                "text_to_image/median_rank", "image_to_text/mAP@10"):
        assert key in metrics
    for name in ("report.md", "report.html", "recall_at_k.png", "retrieval_text_to_image.png"):
        assert (tmp_path / "eval" / name).exists()
    # zero-shot through main() in-process, with templates given on the command line
    assert main(["--model", str(tmp_path / "model"), "--data", manifest, "--task", "zero_shot",
                 "--output", str(tmp_path / "zs"), "--templates", "a {} photo", "{}"]) == 0
    zs = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert zs["templates"] == ["a {} photo", "{}"] and zs["num_classes"] == 4 and "accuracy" in zs
    assert (tmp_path / "zs" / "confusion_matrix.png").exists()
    # bad input names the row and the file
    bad = _write_csv(tmp_path / "data" / "bad.csv", [{"image": "missing.png", "text": "x"}])
    with pytest.raises(SystemExit, match="bad.csv: row 1 \\(line 2\\): image column 'image'.*missing.png"):
        main(["--model", str(tmp_path / "model"), "--data", bad, "--task", "retrieval", "--output", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="needs a model with a task head"):
        main(["--model", str(tmp_path / "model"), "--data", manifest, "--task", "classification"])
    # a two-tower model is evaluated as retrieval without --task
    assert main(["--model", str(tmp_path / "model"), "--data", manifest, "--batch-size", "4"]) == 0
    assert json.loads((tmp_path / "eval-retrieval-test" / "metrics.json").read_text())["num_image"] == 8


@pytest.mark.parametrize("module, shown", [
    ("multimodal.evaluation.cli", ["--batch-size BATCH_SIZE", "(default: 64)", "(default: text)", "(default: 0.03)"]),
    ("multimodal.evaluation.explain_cli", ["(default: 32)", "(default: predicted)", "(default: label)"]),
    ("multimodal.tuning.cli", ["(default: median)", "(default: 5)", "(default: 0)"]),
])
def test_help_shows_the_defaults(module, shown, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for fragment in shown:
        assert fragment in text, (module, fragment)


def test_classification_task_uses_training_metrics_and_saved_labels(tmp_path, tiny_text_dir):
    torch.manual_seed(0)
    encoders = {"text": create_encoder(f"text:{tiny_text_dir}"),
                "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32)}
    fusion = create_fusion("concat", {m: e.output_dim for m, e in encoders.items()}, 8)
    model = MultimodalModel(encoders, fusion=fusion, head=TaskHead(8, 3))
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "labels.json").write_text(json.dumps({"task": "single_label", "labels": ["blue", "green", "red"]}))
    items = _colour_images(tmp_path / "data", 2, seed=4)
    rows = [{"image": os.path.basename(p), "text": f"{c} thing", "label": c} for p, c in items if c != "yellow"]
    manifest = _write_csv(tmp_path / "data" / "cls.csv", rows)
    assert main(["--model", str(tmp_path / "model"), "--data", manifest, "--task", "classification",
                 "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_examples"] == 6 and 0 <= metrics["accuracy"] <= 1 and "macro_f1" in metrics
    assert metrics["class_names"] == ["blue", "green", "red"] and np.array(metrics["confusion_matrix"]).sum() == 6
    assert (tmp_path / "eval" / "confusion_matrix.png").exists()
    # without --task the model folder says it is a classifier; without --output the results go beside the folder
    before = sorted(os.listdir(tmp_path / "model"))
    assert main(["--model", str(tmp_path / "model") + "/", "--data", manifest]) == 0
    beside = json.loads((tmp_path / "eval-classification-cls" / "metrics.json").read_text())
    assert beside["task"] == "classification" and beside["confusion_matrix"] == metrics["confusion_matrix"]
    assert sorted(os.listdir(tmp_path / "model")) == before  # nothing written inside the model folder
    # other column names: --text-column / --item-column apply to classification too
    renamed = _write_csv(tmp_path / "data" / "renamed.csv",
                         [{"img": r["image"], "caption": r["text"], "label": r["label"]} for r in rows])
    assert main(["--model", str(tmp_path / "model"), "--data", renamed, "--task", "classification",
                 "--text-column", "caption", "--item-column", "img", "--output", str(tmp_path / "eval_renamed")]) == 0
    renamed_metrics = json.loads((tmp_path / "eval_renamed" / "metrics.json").read_text())
    assert renamed_metrics["confusion_matrix"] == metrics["confusion_matrix"]
    (tmp_path / "model" / "labels.json").unlink()
    two = _write_csv(tmp_path / "data" / "two.csv", [r for r in rows if r["label"] != "red"])
    with pytest.raises(SystemExit, match="2 labels.*3 outputs"):
        main(["--model", str(tmp_path / "model"), "--data", two, "--task", "classification", "--output", str(tmp_path / "e2")])
