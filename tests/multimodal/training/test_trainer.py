"""Trainer: learning on tiny data, exact resume, NaN detection, unfreezing, the retrieval (label-free) loss."""

from __future__ import annotations

import copy
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from multimodal import MultimodalModel, Trainer, get_task
from multimodal.config import ExperimentConfig, load_config
from multimodal.tasks import build_loaders
from multimodal.training import NonFiniteLossError


def _tiny_manifest(root, n=24) -> str:
    """Learnable pairs: bright images + 'sunny' captions are class 'day', dark + 'dark' are 'night'."""
    os.makedirs(root / "img", exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        day = i % 2 == 0
        base = 200 if day else 40
        pixels = np.clip(base + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        word = rng.choice(["sunny", "bright", "noon"] if day else ["dark", "midnight", "moonlit"])
        rows.append({"text": f"a {word} scene number {i}", "image": f"img/{i}.png", "label": "day" if day else "night"})
    path = root / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _config(tmp_path, tiny_text_dir, *extra) -> ExperimentConfig:
    manifest = _tiny_manifest(tmp_path / "data")
    return load_config(
        None,
        [
            f"data.train={manifest}",
            "data.audio_column=null",
            "data.val_fraction=0.25",
            "data.test_fraction=0",
            "data.num_workers=0",
            f"model.encoders={{text: 'text:{tiny_text_dir}', image: 'image:test_efficientnet'}}",
            "model.encoder_kwargs={image: {img_size: 32}}",
            "model.pretrained=false",
            "model.fusion_dim=16",
            "model.head_dropout=0.2",
            f"train.output_dir={tmp_path / 'out'}",
            "train.epochs=3",
            "train.batch_size=6",
            "train.head_lr=3e-3",
            "train.encoder_lr=1e-3",
            "train.log_every=1",
            "train.log_with=none",
            "train.progress_bar=false",
            "train.seed=3",
            *extra,
        ],
    )


def _parts(cfg):
    task = get_task(cfg.model.task)(cfg)
    splits = task.build_splits(progress=False)
    model = task.build_model(splits)
    return task, splits, model, build_loaders(task, model, splits, progress=False)


def _trainer(cfg, task, splits, model, loaders) -> Trainer:
    return Trainer(model, cfg.train, loaders["train"], loaders["validation"],
                   compute_metrics_fn=lambda preds: task.evaluate(preds, splits.validation, model, full=False).metrics,
                   metric_for_best=task.default_metric(), unfreeze_after_epochs=cfg.model.unfreeze_after_epochs,
                   eval_batch_loss=task.batch_loss)


def _run(cfg):
    trainer = _trainer(cfg, *_parts(cfg))
    trainer.train()
    return trainer


def test_learns_and_saves_best(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir, "train.epochs=8", "train.head_lr=1e-2", "train.warmup_ratio=0")
    trainer = _run(cfg)
    log = trainer.state.train_log
    first, last = np.mean([e["loss"] for e in log[:3]]), np.mean([e["loss"] for e in log[-3:]])
    assert last < first * 0.7
    best = max(h["accuracy"] for h in trainer.state.history)
    assert best >= 5 / 6 and trainer.state.history[-1]["num_examples"] == 6  # chance is 1/2
    # the saved best model reloads and predicts like the trained one would at that epoch
    reloaded = MultimodalModel.from_pretrained(os.path.join(cfg.train.output_dir, "model"))
    task, splits, _, _ = _parts(cfg)
    batch = next(iter(build_loaders(task, reloaded, splits, progress=False)["validation"]))
    with torch.no_grad():
        acc = (reloaded(inputs=batch["inputs"], present=batch["present"]).logits.argmax(-1) == batch["labels"]).float().mean()
    assert float(acc) == pytest.approx(trainer.state.history[trainer.state.best_epoch - 1]["accuracy"])
    assert sorted(os.listdir(os.path.join(cfg.train.output_dir, "checkpoints"))) == ["epoch-007", "epoch-008"]


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.unwrapped_model.state_dict().items()}


def test_resume_is_bit_identical(tmp_path, tiny_text_dir):
    # 18 training rows, batch 6, accumulation 2 -> 3 batches (2 optimizer steps) per epoch; dropout on.
    base = ["train.grad_accum_steps=2", "train.keep_checkpoints=null", "model.modality_dropout=0.3"]
    full = _run(_config(tmp_path / "a", tiny_text_dir, *base))
    reference = _weights(full)
    assert full.state.global_step == 6

    interrupted_cfg = _config(tmp_path / "b", tiny_text_dir, *base, "train.stop_after_steps=3")
    interrupted = _run(interrupted_cfg)
    assert interrupted.state.global_step == 3 and interrupted.state.epoch == 1
    ckpts = sorted(os.listdir(os.path.join(interrupted_cfg.train.output_dir, "checkpoints")))
    assert ckpts == ["epoch-001", "step-0000003"]
    assert any(not torch.equal(reference[k], v) for k, v in _weights(interrupted).items())

    for ckpt in ckpts:  # mid-epoch and epoch-boundary checkpoints
        cfg = copy.deepcopy(interrupted_cfg)
        cfg.train.stop_after_steps = None
        cfg.train.resume_from = os.path.join(interrupted_cfg.train.output_dir, "checkpoints", ckpt)
        resumed = _run(cfg)
        assert resumed.state.global_step == 6
        weights = _weights(resumed)
        assert weights.keys() == reference.keys()
        for k in reference:
            assert torch.equal(weights[k], reference[k]), (ckpt, k)
        assert [h["accuracy"] for h in resumed.state.history] == [h["accuracy"] for h in full.state.history]


def test_nan_loss_names_the_step(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir, "train.log_every=4", "train.max_grad_norm=null")
    trainer = _trainer(cfg, *_parts(cfg))
    original = trainer.scheduler.step

    def poison():  # after the update of optimizer step 2 (1-based), the head's weights become NaN
        original()
        if trainer.state.global_step == 1:
            with torch.no_grad():
                trainer.unwrapped_model.head.net[-1].weight.fill_(float("nan"))

    trainer.scheduler.step = poison
    with pytest.raises(NonFiniteLossError, match=r"optimizer step 3 \(epoch 1\)"):
        trainer.train()


def test_unfreeze_after_epochs(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir, "model.freeze_encoders=true", "model.unfreeze_after_epochs=1", "train.epochs=2")
    task, splits, model, loaders = _parts(cfg)
    before = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    trainer = _trainer(cfg, task, splits, model, loaders)
    trainer.train()
    assert trainer.state.unfrozen
    ckpt = load_file(os.path.join(cfg.train.output_dir, "checkpoints", "epoch-001", "model.safetensors"))
    after_epoch1 = {k[len("encoders."):]: v for k, v in ckpt.items() if k.startswith("encoders.")}
    changed1 = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after_epoch1[k])]
    assert changed1 == []  # frozen during epoch 1
    final = model.encoders.state_dict()
    changed2 = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], final[k])]
    assert any(k.startswith("text.") for k in changed2) and any(k.startswith("image.") for k in changed2)


def test_retrieval_loss_without_labels(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir, "model.task=retrieval", "model.freeze_encoders=false",
                  "data.label_column=null", "train.epochs=2")
    task, splits, model, loaders = _parts(cfg)
    assert not splits.train.has_labels
    assert "labels" not in next(iter(loaders["train"]))
    trainer = _trainer(cfg, task, splits, model, loaders)
    trainer.train()
    assert trainer.metric_for_best == "rsum" and trainer.state.history[-1]["num_examples"] == 6
    assert {"text_to_image/R@1", "image_to_text/R@1", "rsum", "loss"} <= set(trainer.state.history[-1])
    assert all(np.isfinite(e["loss"]) for e in trainer.state.train_log)


def test_early_stopping(tmp_path, tiny_text_dir):
    cfg = _config(
        tmp_path, tiny_text_dir, "train.epochs=6", "train.metric_for_best=accuracy", "train.metric_mode=min",
        "train.early_stopping_patience=2",
        "train.freeze_norm_stats=false",  # a random-init encoder: its initial BatchNorm statistics mean nothing
    )
    trainer = _run(cfg)
    state = trainer.state
    accs = [h["accuracy"] for h in state.history]
    assert state.stopped_early and state.epoch == len(accs) < 6
    # "min" mode: the best epoch has the lowest accuracy, ties going to the lower validation loss; stopped
    # `patience` epochs after it
    losses = [h["loss"] for h in state.history]
    assert state.best_epoch == 1 + min(range(len(accs)), key=lambda i: (accs[i], losses[i]))
    assert state.epoch == state.best_epoch + 2
    assert all(np.isfinite(e["loss"]) for e in state.train_log)
    # history's train_loss is the whole epoch's mean (log_every=1: one train_log entry per batch)
    for h in state.history:
        batch_losses = [e["loss"] for e in state.train_log if h["epoch"] - 1 < e["epoch"] <= h["epoch"]]
        assert h["train_loss"] == pytest.approx(np.mean(batch_losses), rel=1e-5)
    # resuming a run that already stopped early trains nothing more
    cfg.train.resume_from = "latest"
    resumed = _run(cfg)
    assert resumed.state.epoch == state.epoch and resumed.state.global_step == state.global_step
    assert resumed.state.stopped_early


@pytest.mark.parametrize("task", ["multi_label", "regression"])
def test_multi_label_and_regression_metrics(tmp_path, tiny_text_dir, task):
    cfg = _config(tmp_path, tiny_text_dir, f"model.task={task}", "data.label_column=target", "train.epochs=2")
    frame = pd.read_csv(cfg.data.train)
    day = frame["label"] == "day"
    frame["target"] = np.where(day, "sun|light", "moon") if task == "multi_label" else np.where(day, 1.5, -0.5)
    frame.to_csv(cfg.data.train, index=False)
    trainer = _run(cfg)
    last = trainer.state.history[-1]
    expected = {"micro_f1", "macro_f1", "subset_accuracy"} if task == "multi_label" else {"mse", "mae", "r2"}
    assert expected <= set(last) and last["num_examples"] == 6
    assert trainer.metric_for_best == ("micro_f1" if task == "multi_label" else "mse")
    if task == "multi_label":
        assert trainer.unwrapped_model.head.num_outputs == 3  # light, moon, sun
    assert all(np.isfinite(e["loss"]) for e in trainer.state.train_log)


def test_options_group_the_keywords_and_unknown_ones_are_refused(tmp_path, tiny_text_dir):
    from multimodal.training import TrainerOptions

    cfg = _config(tmp_path, tiny_text_dir, "train.epochs=1")
    task, splits, model, loaders = _parts(cfg)
    options = TrainerOptions(metric_for_best="accuracy", metric_mode_for_best="max", run_name="x")
    trainer = Trainer(model, cfg.train, loaders["train"], loaders["validation"], options=options,
                      metric_mode_for_best="min")  # a keyword replaces the option of the same name
    assert (trainer.metric_for_best, trainer.metric_mode, trainer.options.run_name) == ("accuracy", "min", "x")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['compute_metric_fn'\]"):
        Trainer(model, cfg.train, loaders["train"], compute_metric_fn=lambda p: {})
