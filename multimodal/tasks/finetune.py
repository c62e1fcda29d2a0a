"""The runner's fine-tuning hooks: what to train (probe, LoRA, last blocks), how (probe fit or Trainer), and
what to do after (WiSE-FT), kept out of `runner.py` so each method lives in its own module."""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from multimodal.config.schema import ExperimentConfig
from multimodal.models.peft import apply_peft
from multimodal.models.unlock import unlock_last_blocks
from multimodal.tasks.probe import as_probe_model, fit_probe
from multimodal.training.ema import WeightEma
from multimodal.training.wise import snapshot, wise_ft_sweep


def prepare_model(model: Any, cfg: ExperimentConfig, label_type: Optional[str]) -> Any:
    """Apply the configured method to a freshly built model: linear probe head, LoRA adapters, unlocked blocks."""
    if cfg.train.linear_probe:
        return as_probe_model(model, label_type)
    if cfg.train.probe_init:  # LP-FT: the probe's fusion and linear head, the encoders as configured
        trainable = [m for m, enc in model.encoders.items() if not enc.frozen]
        as_probe_model(model, label_type)
        model.unfreeze_encoders(trainable)
    if cfg.model.unlock_last_blocks:
        unlock_last_blocks(model, cfg.model.unlock_last_blocks)
    if cfg.model.peft is not None:
        apply_peft(model, cfg.model.peft, pretrained=cfg.model.pretrained, encoder_kwargs=cfg.model.encoder_kwargs)
    return model


def parameter_counts(model: Any) -> dict[str, Any]:
    """Trainable and total parameter counts, overall and for the encoders (what metrics.json records)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    enc_total = sum(p.numel() for p in model.encoders.parameters())
    enc_trainable = sum(p.numel() for p in model.encoders.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "encoders_total": enc_total,
            "encoders_trainable": enc_trainable,
            "encoders_trainable_fraction": round(enc_trainable / enc_total, 6) if enc_total else 0.0}


def train_model(trainer: Any, task: Any, model: Any, loaders: dict, splits: Any, cfg: ExperimentConfig,
                output_dir: str) -> dict[str, Any]:
    """Fit the probe (then save it as the best model), or run the Trainer; returns extra result entries."""
    if not cfg.train.linear_probe:
        extra: dict[str, Any] = {}
        if cfg.train.probe_init and not cfg.train.resume_from:  # a resumed run has the fitted head already
            acc = trainer.accelerator
            info = fit_probe(trainer.unwrapped_model, task, acc, acc.prepare(loaders["train_eval"]), trainer.eval_loader,
                             splits.validation, trainer.metric_for_best, trainer.metric_mode, cs=cfg.train.probe_cs,
                             refit=False)
            extra["probe_init"] = {k: info[k] for k in ("C", "num_train")}
            acc.print(f"probe_init: linear probe fitted (C={info['C']:g}); fine-tuning from it")
            if trainer.ema is not None:  # the average starts from the probe-initialised weights
                trainer.ema = WeightEma(trainer.unwrapped_model, cfg.train.ema_decay, cfg.train.ema_warmup)
        start = snapshot(model) if cfg.train.wise_ft_alphas else None  # WiSE-FT then interpolates LP -> FT
        trainer.train()
        return {**extra, "_start_state": start} if start is not None else extra
    acc = trainer.accelerator
    train_loader = acc.prepare(loaders["train_eval"])
    refit = True if cfg.train.refit_full is None else bool(cfg.train.refit_full)
    info = fit_probe(trainer.unwrapped_model, task, acc, train_loader, trainer.eval_loader, splits.validation,
                     trainer.metric_for_best, trainer.metric_mode, cs=cfg.train.probe_cs, refit=refit)
    trainer.state.best_epoch, trainer.state.epoch = 1, 1
    trainer.save_model(os.path.join(output_dir, "model"))
    return {"probe": info}


def after_training(trainer: Any, task: Any, model: Any, splits: Any, cfg: ExperimentConfig, output_dir: str,
                   extra: dict[str, Any]) -> dict[str, Any]:
    """WiSE-FT over the best weights (already loaded into `model`); returns result entries for metrics.json."""
    start = extra.pop("_start_state", None)
    out: dict[str, Any] = dict(extra)
    if start is not None and trainer.eval_loader is not None:
        sweep = wise_ft_sweep(trainer, task, model, start, cfg.train.wise_ft_alphas, splits.validation)
        trainer.save_model(os.path.join(output_dir, "model"))
        out["wise_ft"] = sweep
    out["parameters"] = parameter_counts(model)
    return out


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters (for tests and benchmarks comparing runs)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
