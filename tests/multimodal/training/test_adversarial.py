"""FGSM / PGD: perturbations stay in their balls (L-inf pixels in [0, 1], L2 text embeddings, no padding),
they raise the loss, they pass through frozen encoders, the Trainer trains on clean + adversarial copies,
and the evaluate CLI scores robust accuracy."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from encoders import create_encoder
from fusion import create_fusion
from multimodal import MultimodalModel, TaskHead, load_config, run
from multimodal.config import AdversarialConfig, ConfigError
from multimodal.evaluation.cli import main as evaluate
from multimodal.training.adversarial import Adversary, text_embedding_layer


def _model(tiny_text_dir, freeze=False):
    torch.manual_seed(0)
    enc = {"text": create_encoder(f"text:{tiny_text_dir}", pretrained=False),
           "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32)}
    fusion = create_fusion("concat", {m: e.output_dim for m, e in enc.items()}, 16)
    model = MultimodalModel(enc, fusion=fusion, head=TaskHead(16, 3))
    if freeze:
        model.freeze_encoders()
    return model


def _batch(model):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    texts = ["a red square", "blue", "a green thing on a table", None]
    return {"inputs": {"image": model.encoders["image"].preprocess(images),
                       "text": model.encoders["text"].preprocess(texts)},
            "present": {"image": torch.ones(4, dtype=torch.bool), "text": torch.tensor([True, True, True, False])},
            "labels": torch.tensor([0, 1, 2, 1]), "index": torch.arange(4)}


def _loss(model, batch, inputs=None, delta=None):
    from multimodal.training.adversarial import embedding_offset

    model.eval()
    with torch.no_grad(), embedding_offset(model.encoders["text"], delta):
        return float(model(inputs=inputs or batch["inputs"], present=batch["present"], labels=batch["labels"]).loss)


@pytest.mark.parametrize("freeze", [False, True])
def test_pgd_on_pixels_stays_in_the_ball_and_raises_the_loss(tiny_text_dir, freeze):
    model = _model(tiny_text_dir, freeze)
    batch = _batch(model)
    adv = Adversary(AdversarialConfig(method="pgd", epsilon=0.05, steps=5, on=["image"]), seed=0)
    inputs, delta = adv.perturb(model, batch)
    assert delta is None and inputs["text"] == batch["inputs"]["text"]  # text untouched
    enc = model.encoders["image"]
    pixels = (inputs["image"]["pixel_values"] - enc.pixel_shift) / (255.0 * enc.pixel_scale)  # back to [0, 1]
    clean = batch["inputs"]["image"]["pixel_values"].float() / 255.0
    change = (pixels - clean).abs()
    assert float(change.max()) <= 0.05 + 1e-5 and float(change.max()) > 0.04  # on the ball's edge, not inside it
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5
    assert _loss(model, batch, inputs) > _loss(model, batch) + 0.01  # the attack works, also through frozen encoders


def test_fgsm_and_text_embedding_ball(tiny_text_dir):
    model = _model(tiny_text_dir)
    batch = _batch(model)
    adv = Adversary(AdversarialConfig(method="fgsm", epsilon=0.5, on=["text_embeddings"]), seed=0)
    assert adv.steps == 1 and adv.step_size["text_embeddings"] == pytest.approx(0.625)
    inputs, delta = adv.perturb(model, batch)
    mask = batch["inputs"]["text"]["attention_mask"].bool()
    assert delta.shape == (*mask.shape, text_embedding_layer(model.encoders["text"]).weight.shape[1])
    assert torch.all(delta[~mask] == 0)  # padding is never perturbed
    norms = delta.flatten(1).norm(dim=1)
    assert torch.all(norms <= 0.5 + 1e-5) and float(norms[:3].min()) > 0.49
    assert _loss(model, batch, delta=delta) > _loss(model, batch)


def test_training_step_sees_clean_and_adversarial_halves(tiny_text_dir):
    model = _model(tiny_text_dir, freeze=True)
    batch = _batch(model)
    seen = []
    handle = model.encoders["image"].register_forward_pre_hook(lambda m, args: seen.append(args[0]["pixel_values"]))
    adv = Adversary(AdversarialConfig(epsilon=0.05, steps=2, on=["image"], mix=True), seed=0)
    out = adv.training_output(model, model, batch)
    handle.remove()
    final = seen[-1]
    assert final.shape[0] == 8 and out.logits.shape[0] == 8 and out.loss.requires_grad
    enc = model.encoders["image"]
    clean = batch["inputs"]["image"]["pixel_values"].float() * enc.pixel_scale + enc.pixel_shift
    torch.testing.assert_close(final[:4], clean)
    assert not torch.allclose(final[4:], clean)
    only = Adversary(AdversarialConfig(epsilon=0.05, steps=2, on=["image"], mix=False), seed=0)
    assert only.training_output(model, model, batch).logits.shape[0] == 4


def _manifest(root, n=24):
    os.makedirs(root / "img", exist_ok=True)
    rows = []
    for i in range(n):
        day = i % 2 == 0
        Image.fromarray(np.full((16, 16, 3), 200 if day else 50, np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"text": f"scene {i}", "image": f"img/{i}.png", "label": "day" if day else "night",
                     "split": "test" if i >= 18 else ("validation" if i >= 14 else "train")})
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)


def test_adversarial_training_run_and_robust_accuracy_in_the_cli(tmp_path, tiny_text_dir):
    _manifest(tmp_path)
    cfg = {"data": {"train": str(tmp_path / "m.csv"), "split_column": "split", "num_workers": 0, "audio_column": None},
           "model": {"encoders": {"text": f"text:{tiny_text_dir}", "image": "image:test_efficientnet"},
                     "encoder_kwargs": {"image": {"img_size": 32}}, "pretrained": False, "fusion_dim": 16,
                     "freeze_encoders": ["text"]},
           "train": {"output_dir": str(tmp_path / "out"), "epochs": 1, "batch_size": 8, "log_with": "none",
                     "progress_bar": False, "save_checkpoints": False,
                     "adversarial": {"method": "pgd", "epsilon": 0.03, "steps": 2, "on": ["image"]}},
           "eval": {"html_report": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(str(tmp_path / "cfg.yaml"))
    assert config.train.adversarial.on == ["image"]  # the YAML key `on` (a boolean in YAML 1.1) is read as "on"
    metrics = run(config)
    assert metrics["epochs_run"] == 1
    args = ["--model", str(tmp_path / "out" / "model"), "--data", str(tmp_path / "out" / "splits" / "test.csv"),
            "--task", "classification", "--output", str(tmp_path / "ev")]
    assert evaluate([*args, "--attack", "pgd", "--epsilon", "0.1", "--attack-steps", "5"]) == 0
    with open(tmp_path / "ev" / "metrics.json") as f:
        result = json.load(f)
    assert result["accuracy"] == metrics["test"]["accuracy"]
    robust = result["robust"]
    assert robust["attack"]["steps"] == 5 and robust["num_examples"] == 6
    assert robust["loss"] > result["loss"] and robust["accuracy"] <= result["accuracy"]
    with pytest.raises(SystemExit, match="--attack-on audio"):
        evaluate([*args, "--attack", "pgd", "--attack-on", "audio"])
    with pytest.raises(ConfigError, match="train.adversarial.epsilon"):
        load_config(str(tmp_path / "cfg.yaml"), ["train.adversarial.epsilon=0"])


def test_adversarial_training_refuses_a_probe_or_distillation(tmp_path):
    # both would silently drop the adversarial step: the probe has no training step, distillation replaces the loss
    base = ["data.demo=text_image", "train.adversarial={on: [image]}"]
    with pytest.raises(ConfigError, match="train.linear_probe"):
        load_config(None, [*base, "train.linear_probe=true"])
    with pytest.raises(ConfigError, match="train.distill"):
        load_config(None, [*base, f"train.distill={{teacher: {tmp_path}}}"])
    assert load_config(None, base).train.adversarial.on == ["image"]
