"""Task prompt_classifier: with prompt weights and no training it is exactly the zero-shot classifier; it
saves and reloads; random init is a different start; it trains on K shots; bad configs name the key."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from multimodal import ConfigError, load_config, load_model, run
from multimodal.evaluation.cli import evaluate_manifest
from multimodal.models import DualEncoder, PromptClassifier
from multimodal.tasks.retrieval import RetrievalTask, read_templates

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 60, 230)}


@pytest.fixture(scope="module")
def towers(tmp_path_factory, tiny_text_dir):
    """A manifest of coloured squares with captions, and a two-tower model trained on it (tiny encoders)."""
    root = tmp_path_factory.mktemp("prompt")
    os.makedirs(root / "img")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(36):
        name = list(COLOURS)[i % 3]
        pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "text": f"a {name} square", "label": name, "item": i,
                     "split": "test" if i >= 27 else ("validation" if i >= 21 else "train")})
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    common = {
        "data": {"train": str(root / "pairs.csv"), "split_column": "split", "num_workers": 0, "audio_column": None,
                 "feature_cache": None, "group_column": "item"},
        "model": {"encoders": {"text": f"text:{tiny_text_dir}", "image": "image:test_efficientnet"},
                  "encoder_kwargs": {"image": {"img_size": 32}}, "pretrained": False, "fusion_dim": 16},
        "train": {"epochs": 3, "batch_size": 8, "log_with": "none", "progress_bar": False, "save_checkpoints": False},
        "eval": {"html_report": False},
    }
    path = root / "common.yaml"
    path.write_text(yaml.safe_dump(common))
    run(load_config(str(path), ["model.task=retrieval", f"train.output_dir={root / 'towers'}",
                                "model.freeze_encoders=false"]))
    return root


def _prompt_cfg(root, *overrides):
    return load_config(str(root / "common.yaml"), ["model.task=prompt_classifier", f"model.init_from={root / 'towers' / 'model'}",
                                                   "model.freeze_encoders=true", *overrides])


def test_untrained_prompt_head_is_the_zero_shot_classifier(towers):
    metrics = run(_prompt_cfg(towers, "train.epochs=0", f"train.output_dir={towers / 'zs'}"))
    dual = load_model(towers / "towers" / "model")
    zero_shot = evaluate_manifest(dual, str(towers / "zs" / "splits" / "test.csv"), "zero_shot",
                                  columns={"text": "text", "image": "image"}, show_progress=False).metrics
    assert metrics["test"]["accuracy"] == zero_shot["accuracy"]
    assert metrics["test"]["macro_f1"] == zero_shot["macro_f1"]
    # and the logits themselves: exp(scale) * image embedding @ class embeddings
    clf = load_model(towers / "zs" / "model")
    assert isinstance(clf, PromptClassifier) and clf.head.class_names == ["blue", "green", "red"]
    names = clf.head.class_names
    weights = RetrievalTask.class_embeddings(dual, names, read_templates(None, "image"))
    pixels = clf.encoders["image"].preprocess([Image.new("RGB", (16, 16), c) for c in COLOURS.values()])
    with torch.no_grad():
        expected = dual.logit_scale.exp() * dual.encode("image", pixels) @ weights.t()
        got = clf(inputs={"image": pixels}).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_few_shot_training_random_init_and_reload(towers):
    out = towers / "k2"
    metrics = run(_prompt_cfg(towers, "data.shots_per_class=2", "train.epochs=4", "train.head_lr=0.05",
                              f"train.output_dir={out}"))
    assert metrics["split_sizes"]["train"] == 6 and metrics["epochs_run"] == 4
    assert any("2 'item' groups per class" in n for n in metrics["split_notes"])
    again = run(_prompt_cfg(towers, "data.shots_per_class=2", "data.shots_seed=5", "train.epochs=0",
                            f"train.output_dir={towers / 'k2s5'}"))
    assert "seed 5" in again["split_notes"][-2] and again["split_sizes"]["test"] == metrics["split_sizes"]["test"]
    first, other = (pd.read_csv(towers / d / "splits" / "train.csv")["image"].tolist() for d in ("k2", "k2s5"))
    assert first != other and len(first) == len(other) == 6  # other shots, same test split
    trained = load_model(out / "model")
    start = run(_prompt_cfg(towers, "train.epochs=0", f"train.output_dir={towers / 'zs2'}"))
    assert start["test"]["loss"] != metrics["test"]["loss"]  # training moved the head
    zs = load_model(towers / "zs2" / "model")
    assert not torch.allclose(trained.head.class_weights, zs.head.class_weights)
    rand = run(_prompt_cfg(towers, "train.epochs=0", "model.classifier_init=random", f"train.output_dir={towers / 'r0'}"))
    rand_model = load_model(towers / "r0" / "model")
    assert rand_model.head.init == "random"
    assert not torch.allclose(rand_model.head.class_weights, zs.head.class_weights, atol=1e-3)
    torch.testing.assert_close(rand_model.head.class_weights.norm(dim=-1), torch.ones(3))  # same norm as prompts
    assert rand["test"]["loss"] != start["test"]["loss"]
    with open(out / "metrics.json") as f:
        assert json.load(f)["task"] == "prompt_classifier"


def test_prompt_classifier_config_errors(towers, tiny_text_dir):
    with pytest.raises(ConfigError, match="one non-text modality"):
        load_config(None, ["model.task=prompt_classifier", "model.encoders={image: 'image:a', audio: 'audio-mel:b'}"])
    with pytest.raises(ConfigError, match="text tower"):
        load_config(None, ["model.task=prompt_classifier", "model.encoders={image: 'image:a'}"])
    cfg = _prompt_cfg(towers, f"model.init_from={towers / 'nowhere'}")
    with pytest.raises(ConfigError, match="model.init_from"):
        run(cfg)
    assert isinstance(load_model(towers / "towers" / "model"), DualEncoder)
