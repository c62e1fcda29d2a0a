"""train.freeze_norm_stats: BatchNorm running statistics stay fixed while the encoders train, and saved models keep it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from multimodal import Trainer, load_model
from tests.multimodal.training.test_finetune_methods import _parts
from tests.multimodal.training.test_trainer import _config


def _stats(model) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": getattr(m, k).clone() for n, m in model.encoders["image"].named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) for k in ("running_mean", "running_var")}


def _one_step(tmp_path, tiny_text_dir, frozen: bool):
    cfg = _config(tmp_path, tiny_text_dir, "model.freeze_encoders=false", "data.feature_cache=null", "train.epochs=1",
                  f"train.freeze_norm_stats={str(frozen).lower()}", "train.save_checkpoints=false")
    task, splits, model, loaders = _parts(cfg)
    before = _stats(model)
    weights = {n: p.detach().clone() for n, p in model.encoders["image"].named_parameters()}
    trainer = Trainer(model, cfg.train, loaders["train"], loaders["validation"],
                      compute_metrics_fn=lambda p: task.evaluate(p, splits.validation, model, full=False).metrics,
                      metric_for_best=task.default_metric(), eval_batch_loss=task.batch_loss)
    trainer.train()
    moved = [n for n, p in model.encoders["image"].named_parameters() if not torch.equal(p, weights[n])]
    return before, _stats(model), moved, model, cfg


def test_frozen_norm_stats_do_not_move_while_the_encoder_trains(tmp_path, tiny_text_dir):
    before, after, moved, model, cfg = _one_step(tmp_path, tiny_text_dir, frozen=True)
    assert before, "the test image encoder has BatchNorms"
    assert any(".bn" in n or "bn1" in n for n in moved), "the norms' affine weights still train"
    assert any("conv" in n for n in moved)
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    model.train()
    norms = [m for m in model.encoders["image"].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.training for m in norms)

    saved = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert sorted(saved["norm_stats_frozen"]) == ["image", "text"]
    reloaded = load_model(tmp_path / "out" / "model").train()
    assert reloaded.encoders["image"].norm_stats_frozen
    assert not any(m.training for m in reloaded.encoders["image"].modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_norm_stats_update_when_not_frozen(tmp_path, tiny_text_dir):
    before, after, _, model, _ = _one_step(tmp_path, tiny_text_dir, frozen=False)
    assert any(not torch.equal(value, after[name]) for name, value in before.items())
    saved = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert saved["norm_stats_frozen"] == []


def test_bad_norm_stats_field_in_a_saved_folder_is_named(tmp_path, tiny_text_dir):
    _one_step(tmp_path, tiny_text_dir, frozen=True)
    path = tmp_path / "out" / "model" / "config.json"
    config = json.loads(path.read_text())
    config["norm_stats_frozen"] = ["audio"]
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="norm_stats_frozen"):
        load_model(tmp_path / "out" / "model")


@pytest.mark.parametrize("extra, expected", [
    (["model.pretrained=true"], True),  # pretrained encoders keep their statistics (BENCHMARKS.md section 11)
    ([], False),  # this file's configs have model.pretrained=false: random-init statistics mean nothing
    (["train.freeze_norm_stats=true"], True),  # an explicit value wins
])
def test_the_default_follows_model_pretrained(tmp_path, tiny_text_dir, extra, expected):
    assert _config(tmp_path, tiny_text_dir, *extra).train.freeze_norm_stats is expected
