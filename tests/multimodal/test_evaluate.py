"""Evaluation: embeddings match the model's forward, zero-shot above chance after training, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from encoders import create_encoder
from fusion import create_fusion
from multimodal.evaluate import (
    embed,
    evaluate_retrieval,
    evaluate_zero_shot,
    main,
    read_templates,
    zero_shot_weights,
)
from multimodal.model import MultimodalModel

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}


def _tiny_model(tiny_text_dir: str) -> MultimodalModel:
    torch.manual_seed(0)
    encoders = {
        "text": create_encoder(f"text:{tiny_text_dir}"),
        "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32),
    }
    fusion = create_fusion("contrastive", {m: e.output_dim for m, e in encoders.items()}, 16)
    return MultimodalModel(encoders, fusion)


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


def test_embeddings_match_model_forward_and_retrieval_metrics(tmp_path, tiny_text_dir):
    model = _tiny_model(tiny_text_dir).eval()
    items = _colour_images(tmp_path / "img", 2, seed=1)
    rows = [{"image": os.path.basename(p), "text": f"a {c} square number {i % 2}"} for i, (p, c) in enumerate(items)]
    rows += [{"image": os.path.basename(p), "text": f"another caption {i}"} for i, (p, _) in enumerate(items[:3])]
    manifest = _write_csv(tmp_path / "img" / "pairs.csv", rows)
    paths = [p for p, _ in items]
    img_emb = embed(model, "image", paths, batch_size=3, show_progress=False)
    with torch.no_grad():
        inputs = {m: model.encoders[m].preprocess(raw) for m, raw in
                  (("image", [Image.open(p) for p in paths]), ("text", [r["text"] for r in rows[: len(paths)]]))}
        out = model(inputs=inputs)
    assert torch.allclose(img_emb, out.embeddings["image"], atol=1e-5)
    # a frozen tower goes through the feature cache and gives the same embeddings
    model.freeze_encoders(["image"])
    cached = embed(model, "image", paths, batch_size=3, cache_dir=str(tmp_path / "cache"), show_progress=False)
    assert torch.allclose(cached, img_emb, atol=1e-5) and len(list((tmp_path / "cache").iterdir())) == 1
    metrics, examples = evaluate_retrieval(model, manifest, batch_size=4, show_progress=False)
    assert metrics["num_items"] == 8 and metrics["num_captions"] == 11
    assert metrics["image_to_text/num_queries"] == 8
    assert 0.0 <= metrics["text_to_image/R@1"] <= 1.0 and 1 <= metrics["text_to_image/median_rank"] <= 8
    assert len(examples.text_queries) == 5 and all(len(r) == 5 for r in examples.text_results)
    assert sum(map(sum, examples.item_correct)) >= 1  # each item query lists its own captions somewhere


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
    weights = zero_shot_weights(model, list(COLOURS), ["a photo of a {}.", "a picture of a {}."])
    assert weights.shape == (4, 16) and torch.allclose(weights.norm(dim=-1), torch.ones(4), atol=1e-5)
    manifest = _write_csv(tmp_path / "test" / "zs.csv", [{"image": p, "label": c} for p, c in test])
    metrics = evaluate_zero_shot(model, manifest, templates=["a photo of a {}.", "a picture of a {}."],
                                 show_progress=False)
    assert metrics["num_samples"] == 20 and metrics["chance/top1"] == 0.25
    assert metrics["top1"] >= 0.6, metrics  # well above chance (0.25)
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
    assert metrics["task"] == "retrieval" and metrics["num_items"] == 8 and metrics["num_captions"] == 16
    for key in ("text_to_image/R@1", "text_to_image/R@5", "text_to_image/R@10", "image_to_text/R@1",
                "text_to_image/median_rank", "image_to_text/mAP@10"):
        assert key in metrics
    for name in ("report.md", "report.html", "recall_at_k.png", "retrieval_examples.png"):
        assert (tmp_path / "eval" / name).exists()
    # zero-shot through main() in-process, with templates given on the command line
    assert main(["--model", str(tmp_path / "model"), "--data", manifest, "--task", "zero_shot",
                 "--output", str(tmp_path / "zs"), "--templates", "a {} photo", "{}"]) == 0
    zs = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert zs["templates"] == ["a {} photo", "{}"] and zs["num_classes"] == 4 and "top1" in zs
    assert (tmp_path / "zs" / "confusion_matrix.png").exists()
    # bad input names the row and the file
    bad = _write_csv(tmp_path / "data" / "bad.csv", [{"image": "missing.png", "text": "x"}])
    with pytest.raises(FileNotFoundError, match="row 1.*missing.png"):
        main(["--model", str(tmp_path / "model"), "--data", bad, "--task", "retrieval", "--output", str(tmp_path / "b")])


def test_classification_task_uses_training_metrics_and_saved_labels(tmp_path, tiny_text_dir):
    from multimodal.heads import TaskHead

    torch.manual_seed(0)
    encoders = {"text": create_encoder(f"text:{tiny_text_dir}"),
                "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32)}
    fusion = create_fusion("concat", {m: e.output_dim for m, e in encoders.items()}, 8)
    model = MultimodalModel(encoders, fusion, TaskHead(8, 3))
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
    # other column names: --text-column / --item-column apply to classification too
    renamed = _write_csv(tmp_path / "data" / "renamed.csv",
                         [{"img": r["image"], "caption": r["text"], "label": r["label"]} for r in rows])
    assert main(["--model", str(tmp_path / "model"), "--data", renamed, "--task", "classification",
                 "--text-column", "caption", "--item-column", "img", "--output", str(tmp_path / "eval_renamed")]) == 0
    renamed_metrics = json.loads((tmp_path / "eval_renamed" / "metrics.json").read_text())
    assert renamed_metrics["confusion_matrix"] == metrics["confusion_matrix"]
    (tmp_path / "model" / "labels.json").unlink()
    two = _write_csv(tmp_path / "data" / "two.csv", [r for r in rows if r["label"] != "red"])
    with pytest.raises(ValueError, match="2 labels.*3 outputs"):
        main(["--model", str(tmp_path / "model"), "--data", two, "--task", "classification", "--output", str(tmp_path / "e2")])
