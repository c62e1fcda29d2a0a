"""Training with LoRA, unlocked blocks, layer decay, EMA and WiSE-FT: exact resume, what trains, the sweeps."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from multimodal import Trainer, get_task, run
from multimodal.config import ConfigError, load_config
from multimodal.models.param_groups import param_groups
from multimodal.models.unlock import encoder_layer_ids, unlock_last_blocks
from multimodal.tasks import build_loaders
from multimodal.training.methods import prepare_model
from multimodal.training.wise import interpolate, snapshot
from tests.multimodal.training.test_trainer import _config


def _parts(cfg):
    task = get_task(cfg.model.task)(cfg)
    splits = task.build_splits(progress=False)
    model = prepare_model(task.build_model(splits), cfg, task.label_type)
    return task, splits, model, build_loaders(task, model, splits, progress=False)


def _run(cfg) -> Trainer:
    task, splits, model, loaders = _parts(cfg)
    trainer = Trainer(model, cfg.train, loaders["train"], loaders["validation"],
                      compute_metrics_fn=lambda p: task.evaluate(p, splits.validation, model, full=False).metrics,
                      metric_for_best=task.default_metric(), eval_batch_loss=task.batch_loss)
    trainer.train()
    return trainer


METHODS = {
    "lora+ema+layer_decay": ["model.peft.r=4", "train.ema_decay=0.9", "train.layer_decay=0.7"],
    "last_block+ema": ["model.unlock_last_blocks={image: 1, text: 1}", "train.ema_decay=0.8", "train.ema_warmup=false"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_is_bit_identical_with_adapters_and_ema(tmp_path, tiny_text_dir, method):
    base = ["train.keep_checkpoints=null", "model.head_dropout=0.3", *METHODS[method]]
    full = _run(_config(tmp_path / "a", tiny_text_dir, *base))
    reference = {k: v.clone() for k, v in full.unwrapped_model.state_dict().items()}
    ema_reference = {k: v.clone() for k, v in full.ema.module.state_dict().items()}
    assert any("raw.accuracy" in h for h in full.state.history)
    cfg = _config(tmp_path / "b", tiny_text_dir, *base, "train.stop_after_steps=4")
    _run(cfg)
    cfg = copy.deepcopy(cfg)
    cfg.train.stop_after_steps, cfg.train.resume_from = None, "latest"
    resumed = _run(cfg)
    assert os.path.isfile(os.path.join(tmp_path / "b" / "out", "checkpoints", "step-0000004", "ema.safetensors"))
    for k, v in resumed.unwrapped_model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    for k, v in resumed.ema.module.state_dict().items():
        assert torch.equal(v, ema_reference[k]), k
    # the EMA differs from the raw weights (it really averages)
    assert any(not torch.equal(ema_reference[k], reference[k]) for k in reference if reference[k].is_floating_point())


def test_lora_trains_only_adapters_and_counts_parameters(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir, "model.peft.r=2", "train.epochs=1", "data.feature_cache=null")
    metrics = run(cfg)
    counts = metrics["parameters"]
    assert 0 < counts["encoders_trainable"] < 0.2 * counts["encoders_total"]
    assert counts["trainable"] > counts["encoders_trainable"]  # fusion and head too


def test_lora_bf16_autocast_runs(tmp_path, tiny_text_dir):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # this process's accelerator was built with "no"
    try:
        trainer = _run(_config(tmp_path, tiny_text_dir, "model.peft.r=2", "train.epochs=1", "train.mixed_precision=bf16"))
        assert trainer.accelerator.mixed_precision == "bf16"
        assert trainer.state.global_step > 0 and all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.train_log)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_unlock_last_blocks(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir, "model.unlock_last_blocks={image: 2, text: 1}")
    _, _, model, _ = _parts(cfg)
    text_trainable = {n for n, p in model.encoders["text"].named_parameters() if p.requires_grad}
    assert text_trainable and all("encoder.layer.1." in n for n in text_trainable)  # 2 layers: only the last
    ids, top = encoder_layer_ids(model.encoders["image"], coarse=True)
    image_trainable = {n for n, p in model.encoders["image"].named_parameters() if p.requires_grad}
    assert image_trainable == {n for n in ids if ids[n] > top - 2}
    frozen_bn = dict(model.encoders["image"].named_modules())["backbone.bn1"]
    model.train()
    assert not frozen_bn.training
    unlock_last_blocks(model, {"image": 0})
    assert model.encoders["image"].frozen
    with pytest.raises(ValueError, match="model.unlock_last_blocks names 'audio'"):
        unlock_last_blocks(model, {"audio": 1})


def test_layer_decay_groups(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir)
    _, _, model, _ = _parts(cfg)
    groups = param_groups(model, encoder_lr=1.0, head_lr=5.0, weight_decay=0.1, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    emb = named["encoders.text.backbone.embeddings.word_embeddings.weight"]
    last = named["encoders.text.backbone.encoder.layer.1.attention.self.query.weight"]
    first = named["encoders.text.backbone.encoder.layer.0.attention.self.query.weight"]
    assert lr_of[id(last)] == 1.0 and lr_of[id(first)] == 0.5 and lr_of[id(emb)] == 0.25
    head = [p for n, p in named.items() if n.startswith("head.")]
    assert all(lr_of[id(p)] == 5.0 for p in head)
    ids, top = encoder_layer_ids(model.encoders["image"], coarse=False)
    stem = named["encoders.image.backbone.conv_stem.weight"]
    assert lr_of[id(stem)] == pytest.approx(0.5 ** top)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_wise_ft_interpolates_and_sweeps(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir, "train.wise_ft_alphas=[0.0, 0.5, 1.0]", "train.epochs=2")
    metrics = run(cfg)
    sweep = metrics["wise_ft"]
    assert [r["alpha"] for r in sweep["sweep"]] == [0.0, 0.5, 1.0]
    best = max(r["macro_f1"] for r in sweep["sweep"])
    assert sweep["alpha"] == max(r["alpha"] for r in sweep["sweep"] if r["macro_f1"] == best)
    model = torch.nn.Linear(2, 2)
    start = snapshot(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    end = snapshot(model)
    interpolate(model, start, end, 0.25)
    assert torch.allclose(model.weight, start["weight"] + 0.25)


def test_finetune_config_errors(tmp_path, tiny_text_dir):
    with pytest.raises(ConfigError, match="model.unlock_last_blocks names"):
        _config(tmp_path, tiny_text_dir, "model.unlock_last_blocks={audio: 1}")
    with pytest.raises(ConfigError, match="model.peft and model.unfreeze_after_epochs"):
        _config(tmp_path, tiny_text_dir, "model.peft.r=2", "model.unfreeze_after_epochs=1")
    with pytest.raises(ConfigError, match="train.layer_decay"):
        _config(tmp_path, tiny_text_dir, "train.layer_decay=1.5")
    with pytest.raises(ConfigError, match="train.ema_decay"):
        _config(tmp_path, tiny_text_dir, "train.ema_decay=1")
    with pytest.raises(ConfigError, match="the text encoder .* cannot be mixed"):
        _config(tmp_path, tiny_text_dir, "data.augment.mixup_alpha=0.2")
    with pytest.raises(ConfigError, match="model.peft.modalities names"):
        load_config(None, ["model.peft.modalities=[audio]"])


def test_augmented_frozen_modality_is_not_read_from_the_cache(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir, "model.freeze_encoders=true", f"data.feature_cache={tmp_path / 'cache'}",
                  "data.augment.image_hflip=1.0")
    _, _, _, loaders = _parts(cfg)
    batch = next(iter(loaders["train"]))
    assert sorted(batch["features"]) == ["text"] and "image" in batch["inputs"]  # image: live, augmented
    val = next(iter(loaders["validation"]))
    assert "image" in val["inputs"]
