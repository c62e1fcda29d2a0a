"""The fine-tuning method a config selects: how the model is set up for it, how it is fitted, and what follows.

* Set-up (`prepare_model`): the linear probe's head (``train.linear_probe``), LP-FT's probe head on trainable
  encoders (``train.probe_init``), unlocked last blocks (``model.unlock_last_blocks``), LoRA adapters
  (``model.peft``, `multimodal.models.peft`).
* Fit (`train_model`): the linear probe is fitted, C cross-validated (`multimodal.training.probe`), and saved as the best
  model; otherwise LP-FT fits the probe first, then the `Trainer` trains. A `FitResult` carries what the fit
  leaves: result entries and, with ``train.wise_ft_alphas``, the starting weights WiSE-FT interpolates from.
* After (`after_training`): the WiSE-FT sweep over the best weights (`multimodal.training.wise`) and the
  parameter counts metrics.json records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from multimodal.config.schema import ExperimentConfig
from multimodal.models.peft import apply_peft
from multimodal.models.unlock import unlock_last_blocks
from multimodal.training.ema import WeightEma
from multimodal.training.probe import as_probe_model, fit_probe
from multimodal.training.wise import snapshot, wise_ft_sweep


@dataclass
class FitResult:
    """What fitting a model leaves for the run: entries for its result, and the weights WiSE-FT starts from."""

    entries: dict[str, Any] = field(default_factory=dict)
    wise_start: Optional[dict[str, torch.Tensor]] = None  # a CPU state dict (`multimodal.training.wise.snapshot`)


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


def train_groups(task: Any, cfg: ExperimentConfig, dataset: Any) -> Optional[list[Optional[str]]]:
    """Each training row's group (``data.group_column``, or the task's own), by dataset position; None without."""
    column = cfg.data.group_column or task.group_column()
    return [dataset.value(p, column) for p in range(len(dataset))] if column else None


def _probe(trainer: Any, task: Any, loaders: dict, splits: Any, cfg: ExperimentConfig, refit: bool) -> dict[str, Any]:
    """Fit the probe of the trainer's model on the training features, C chosen by cross-validation."""
    acc, tcfg = trainer.accelerator, cfg.train
    info = fit_probe(trainer.unwrapped_model, task, acc, acc.prepare(loaders["train_eval"]), trainer.eval_loader,
                     splits.validation, trainer.metric_for_best, trainer.metric_mode, cs=tcfg.probe_cs, refit=refit,
                     groups=train_groups(task, cfg, splits.train), select=tcfg.probe_select,
                     folds=tcfg.probe_cv_folds, seed=cfg.data.split_seed, repeats=tcfg.probe_cv_repeats)
    acc.print(f"linear probe: C={info['C']:g} ({info['cv']})")
    return info


def train_model(trainer: Any, task: Any, model: Any, loaders: dict, splits: Any, cfg: ExperimentConfig,
                output_dir: str) -> FitResult:
    """Solve the linear probe (then save it as the best model), or run the Trainer (after LP-FT's probe)."""
    if cfg.train.linear_probe:
        refit = True if cfg.train.refit_full is None else bool(cfg.train.refit_full)
        info = _probe(trainer, task, loaders, splits, cfg, refit)
        trainer.state.best_epoch, trainer.state.epoch = 1, 1
        trainer.save_model(os.path.join(output_dir, "model"))
        return FitResult({"probe": info})
    result = FitResult()
    if cfg.train.probe_init and not cfg.train.resume_from:  # a resumed run has the fitted head already
        info = _probe(trainer, task, loaders, splits, cfg, refit=False)
        result.entries["probe_init"] = {k: info[k] for k in ("C", "num_train")}
        trainer.accelerator.print(f"probe_init: linear probe fitted (C={info['C']:g}); fine-tuning from it")
        if trainer.ema is not None:  # the average starts from the probe-initialised weights
            trainer.ema = WeightEma(trainer.unwrapped_model, cfg.train.ema_decay, cfg.train.ema_warmup)
    if cfg.train.wise_ft_alphas:
        result.wise_start = snapshot(model)  # WiSE-FT then interpolates from here (after LP-FT: LP -> FT)
    trainer.train()
    return result


def after_training(trainer: Any, task: Any, model: Any, splits: Any, cfg: ExperimentConfig, output_dir: str,
                   fit: FitResult) -> dict[str, Any]:
    """WiSE-FT over the best weights (already loaded into `model`); returns result entries for metrics.json."""
    out: dict[str, Any] = dict(fit.entries)
    if fit.wise_start is not None and trainer.eval_loader is not None:
        out["wise_ft"] = wise_ft_sweep(trainer, task, model, fit.wise_start, cfg.train.wise_ft_alphas,
                                       splits.validation)
        trainer.save_model(os.path.join(output_dir, "model"))
    out["parameters"] = parameter_counts(model)
    return out
