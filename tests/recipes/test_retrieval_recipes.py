"""The retrieval recipes end to end at tiny size: demo data, user manifests, locking, outputs."""

from __future__ import annotations

import importlib.util
import json
import os

import pandas as pd
import torch
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "recipes", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _common(tmp_path) -> list[str]:
    return [f"train.output_dir={tmp_path / 'out'}", "train.epochs=2", "train.batch_size=4", "train.log_with=none",
            "train.progress_bar=false", f"data.feature_cache={tmp_path / 'cache'}", "model.fusion_dim=16",
            "model.pretrained=false", "retrieval.html_report=true"]


def test_image_text_recipe_lit_on_demo_data(tmp_path, tiny_text_dir):
    from multimodal.build import build_model
    from multimodal.config import load_config
    from multimodal.model import MultimodalModel
    from multimodal.retrieval import RetrievalExperimentConfig

    argv = _common(tmp_path) + [
        f"model.encoders={{text: 'text:{tiny_text_dir}', image: 'image:test_efficientnet'}}",
        "model.encoder_kwargs={image: {img_size: 32}}",
        "retrieval.lock_image=true", "retrieval.lock_text=false", "retrieval.demo_items=20",
        "train.encoder_lr=0.001",
    ]
    metrics = _recipe("image_text_retrieval").main(argv)
    out = tmp_path / "out"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["locked"] == ["image"] and saved["demo_data"] is True
    sizes = saved["split_sizes"]
    assert sizes["train"]["items"] == 14 and sizes["test"]["items"] == 4 and sizes["train"]["pairs"] == 42
    test = saved["test"]
    assert test["num_items"] == 4 and test["num_captions"] == 12 and test["chance/R@1"] == 0.25
    for key in ("text_to_image/R@1", "text_to_image/R@10", "image_to_text/R@5", "text_to_image/median_rank",
                "image_to_text/mAP@10"):
        assert 0 <= test[key] <= 12
    assert "top1" in saved["test_zero_shot"] and len(saved["history"]) == 2
    assert metrics["test"] == test
    report = (out / "report.md").read_text()
    assert "chance Recall@1 = 1/4" in report and "training_curves.png" in report
    for name in ("report.html", "recall_at_k.png", "retrieval_examples.png", "confusion_matrix.png", "config.yaml"):
        assert (out / name).exists(), name
    # the resolved config reloads, and rebuilds the initial model: the locked tower did not move, the text one did
    cfg = load_config(str(out / "config.yaml"), cls=RetrievalExperimentConfig)
    assert cfg.data.train.endswith("train.csv") and cfg.retrieval.lock_image
    initial = build_model(cfg, None)
    trained = MultimodalModel.from_pretrained(out / "model")
    for a, b in zip(initial.encoders["image"].state_dict().values(), trained.encoders["image"].state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(initial.encoders["text"].parameters(),
                                                     trained.encoders["text"].parameters()))
    assert trained.encoders["image"].frozen and not trained.encoders["text"].frozen
    # the image tower was cached once, by content: one fingerprint directory, one entry per demo image
    dirs = [d for d in os.listdir(tmp_path / "cache") if d.startswith("image-")]
    assert len(dirs) == 1


def test_audio_text_recipe_user_manifest_split_by_item(tmp_path, tiny_text_dir):
    from multimodal.demo_retrieval import make_audio_text_pairs

    paths = make_audio_text_pairs(str(tmp_path / "data"), num_items=15, captions_per_item=2)
    # one user manifest with every pair; the recipe splits it by clip
    frame = pd.concat([pd.read_csv(p) for p in paths.values()]).sample(frac=1.0, random_state=0)
    frame.drop(columns=["item_id"]).to_csv(tmp_path / "data" / "all.csv", index=False)
    argv = _common(tmp_path) + [
        f"model.encoders={{text: 'text:{tiny_text_dir}', audio: 'audio-mel:test_efficientnet'}}",
        "model.encoder_kwargs={audio: {max_seconds: 1.0}}",
        f"data.train={tmp_path / 'data' / 'all.csv'}", "data.val_fraction=0.2", "data.test_fraction=0.2",
        "retrieval.lock_audio=true", "retrieval.lock_text=true",
    ]
    _recipe("audio_text_retrieval").main(argv)
    out = tmp_path / "out"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["locked"] == ["audio", "text"] and saved["demo_data"] is False
    assert {k: v["items"] for k, v in saved["split_sizes"].items()} == {"train": 9, "validation": 3, "test": 3}
    splits = {s: set(pd.read_csv(out / "splits" / f"{s}.csv")["audio"]) for s in ("train", "validation", "test")}
    assert not splits["train"] & splits["test"] and not splits["train"] & splits["validation"]
    assert saved["test"]["num_captions"] == 6 and "audio_to_text/R@1" in saved["test"]
    assert (out / "report.md").exists() and (out / "retrieval_examples.png").exists()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["test"].endswith(os.path.join("splits", "test.csv"))
    assert sorted(d.split("-")[0] for d in os.listdir(tmp_path / "cache")) == ["audio", "text"]
