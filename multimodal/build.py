"""Build model, data and trainer from an `ExperimentConfig`, and run a supervised experiment end to end.

Shared by every recipe:

* `build_model(cfg, num_outputs)` -> `MultimodalModel` (encoders from ``model.encoders`` spec strings,
  fusion by name, a `TaskHead` unless the task is contrastive).
* `build_splits_for(cfg, modalities)` -> validated `DataSplits` (train/validation/test + vocab).
* `build_loaders(cfg, model, splits)` -> DataLoaders whose collate function runs the encoders'
  preprocessors (train-mode for training) in the workers; with ``data.feature_cache`` the frozen
  encoders' features are computed once and read from disk (`multimodal.cache`).
* `build_trainer(cfg, model, loaders)` -> `Trainer`.
* `run_supervised(cfg)` does all of the above for classification/regression, evaluates the best
  model on validation and test, optionally trains single-modality baselines, and writes
  ``output_dir/{model/, metrics.json, config.yaml, labels.json, training_curves.png}``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from typing import Any, Optional

import numpy as np
import torch

from multimodal.config import ExperimentConfig, save_config
from multimodal.data import Collator, DataSplits, build_splits, make_dataloader
from multimodal.metrics import chance_metrics, default_metric
from multimodal.trainer import Trainer


def process_state() -> Any:
    """accelerate's `PartialState`, honouring ``ACCELERATE_USE_CPU`` (as `Accelerator` does) so that
    ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`` runs DDP on CPU (gloo)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def build_model(cfg: ExperimentConfig, num_outputs: Optional[int], modalities: Optional[list[str]] = None) -> Any:
    """A `MultimodalModel` for `cfg.model` (optionally restricted to some modalities, e.g. baselines)."""
    from accelerate.utils import set_seed

    from encoders import create_encoder
    from fusion import create_fusion
    from multimodal.heads import TaskHead
    from multimodal.model import MultimodalModel

    mcfg = cfg.model
    set_seed(cfg.train.seed)
    specs = {m: s for m, s in mcfg.encoders.items() if modalities is None or m in modalities}
    if not specs:
        raise ValueError(f"model.encoders is empty (modalities={modalities})")
    unknown = set(mcfg.encoder_kwargs) - set(mcfg.encoders)
    if unknown:
        raise ValueError(f"model.encoder_kwargs names {sorted(unknown)} which are not in model.encoders")
    encoders = {
        m: create_encoder(spec, pretrained=mcfg.pretrained, **dict(mcfg.encoder_kwargs.get(m, {})))
        for m, spec in sorted(specs.items())
    }
    if mcfg.grad_checkpointing:
        for enc in encoders.values():
            enc.set_grad_checkpointing(True)
    fusion_kwargs = dict(mcfg.fusion_kwargs)
    if mcfg.fusion == "attention":  # token widths that differ from pooled widths (e.g. MobileNetV3)
        token_dims = {m: e.token_dim for m, e in encoders.items() if getattr(e, "token_dim", e.output_dim) != e.output_dim}
        if token_dims:
            fusion_kwargs.setdefault("token_dims", token_dims)
    fusion = create_fusion(mcfg.fusion, {m: e.output_dim for m, e in encoders.items()}, mcfg.fusion_dim, **fusion_kwargs)
    head = None
    if mcfg.task != "contrastive":
        if not num_outputs:
            raise ValueError(f"task {mcfg.task!r} needs the number of outputs (labels)")
        head = TaskHead(
            fusion.output_dim, num_outputs, task=mcfg.task, hidden_dim=mcfg.head_hidden_dim, dropout=mcfg.head_dropout
        )
    model = MultimodalModel(encoders, fusion, head, modality_dropout=mcfg.modality_dropout)
    if mcfg.freeze_encoders:
        model.freeze_encoders()
    return model


def build_splits_for(cfg: ExperimentConfig, modalities: list[str], dataset: Any = None, progress: bool = True) -> DataSplits:
    """Validated train/validation/test splits for the model's modalities (see `multimodal.data.build_splits`)."""
    return build_splits(cfg.data, modalities, task=cfg.model.task, dataset=dataset, progress=progress)


def num_outputs_for(cfg: ExperimentConfig, splits: DataSplits) -> Optional[int]:
    """Head width: the vocabulary size for classification, the target dimension for regression."""
    if cfg.model.task in ("single_label", "multi_label"):
        return len(splits.vocab)
    if cfg.model.task == "regression":
        labels = splits.train.labels()
        return int(labels.shape[-1]) if labels.ndim > 1 else 1
    return None


def _cache_dir(cfg: ExperimentConfig) -> Optional[str]:
    value = cfg.data.feature_cache
    if not value:
        return None
    if value == "auto":
        from multimodal.demo import default_demo_root

        return os.path.join(os.path.dirname(default_demo_root()), "features")
    return value


def build_loaders(
    cfg: ExperimentConfig, model: Any, splits: DataSplits, accelerator: Any = None
) -> dict[str, Optional[torch.utils.data.DataLoader]]:
    """DataLoaders for train/validation/test with the encoders' preprocessors in the collate function.

    With ``data.feature_cache`` set and encoders frozen for the whole run, frozen modalities are
    encoded once (eval preprocessing) into the on-disk cache and batches carry ``features``.
    """
    task = cfg.model.task
    datasets: dict[str, Any] = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    cached: dict[str, Any] = {}
    cache_dir = _cache_dir(cfg)
    if cache_dir and cfg.model.unfreeze_after_epochs is None:
        from multimodal.cache import cache_datasets, frozen_modalities

        if frozen_modalities(model):
            datasets, cached = cache_datasets(model, datasets, cache_dir, accelerator=accelerator)

    def collator(train: bool) -> Any:
        pre = {m: p for m, p in model.get_preprocessors(train).items() if m not in cached}
        base = Collator(pre, task)
        if cached:
            from multimodal.cache import CachedFeatureCollator

            return CachedFeatureCollator(base, cached)
        return base

    tcfg = cfg.train
    eval_bs = cfg.eval.batch_size or tcfg.batch_size
    workers = cfg.data.num_workers
    loaders: dict[str, Optional[torch.utils.data.DataLoader]] = {
        "train": make_dataloader(
            datasets["train"], collator(True), tcfg.batch_size, shuffle=True, num_workers=workers, seed=tcfg.seed
        )
    }
    for name in ("validation", "test"):
        ds = datasets[name]
        loaders[name] = (
            make_dataloader(ds, collator(False), eval_bs, shuffle=False, num_workers=workers, seed=tcfg.seed)
            if ds is not None and len(ds)
            else None
        )
    return loaders


def build_trainer(
    cfg: ExperimentConfig,
    model: Any,
    loaders: dict[str, Any],
    output_dir: Optional[str] = None,
    compute_metrics_fn: Any = None,
    log: bool = True,
    run_name: str = "run",
) -> Trainer:
    """A `Trainer` for the config's training section (optionally writing to another output_dir)."""
    tcfg = copy.deepcopy(cfg.train)
    if output_dir is not None:
        tcfg.output_dir = output_dir
    if not log:
        tcfg.log_with = "none"
    return Trainer(
        model,
        tcfg,
        loaders["train"],
        loaders.get("validation"),
        task=cfg.model.task,
        compute_metrics_fn=compute_metrics_fn,
        tracker_config=_tracker_config(cfg),
        run_name=run_name,
        unfreeze_after_epochs=cfg.model.unfreeze_after_epochs,
    )


def _tracker_config(cfg: ExperimentConfig) -> dict:
    from multimodal.config import config_to_dict

    return config_to_dict(cfg)


def load_weights(model: torch.nn.Module, directory: str) -> None:
    """Load ``model.safetensors`` written by `save_pretrained` into an existing model (strict)."""
    from safetensors.torch import load_file

    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: was the best model saved?")
    state = load_file(path)
    config_path = os.path.join(directory, "config.json")
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            for alias, canonical in json.load(f).get("tied_weights", {}).items():
                state[alias] = state[canonical]
    model.load_state_dict(state, strict=True)


def _train_and_evaluate(
    cfg: ExperimentConfig, splits: DataSplits, modalities: Optional[list[str]], output_dir: str, main: bool
) -> dict:
    """Train one model (all or some modalities), reload its best weights, evaluate on validation and test."""
    model = build_model(cfg, num_outputs_for(cfg, splits), modalities)
    state = process_state()
    loaders = build_loaders(cfg, model, splits, accelerator=state if state.num_processes > 1 else None)
    trainer = build_trainer(cfg, model, loaders, output_dir=output_dir, log=main, run_name="run" if main else "baseline")
    start = time.time()
    trainer.train()
    train_time = time.time() - start
    trainer.accelerator.wait_for_everyone()
    load_weights(trainer.unwrapped_model, os.path.join(output_dir, "model"))
    result: dict[str, Any] = {
        "modalities": sorted(modalities or cfg.model.encoders),
        "best_epoch": trainer.state.best_epoch,
        "epochs_run": trainer.state.epoch,
        "stopped_early": trainer.state.stopped_early,
        "train_time_s": round(train_time, 2),
        "metric_for_best": trainer.metric_for_best,
    }
    if loaders.get("validation") is not None:
        result["validation"] = trainer.evaluate()
    if loaders.get("test") is not None:
        result["test"] = trainer.evaluate(trainer.accelerator.prepare(loaders["test"]))
    result["history"] = trainer.state.history
    result["train_log"] = trainer.state.train_log
    trainer.end()
    return result


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, torch.Tensor):
        return _clean(obj.tolist())
    return obj


def run_supervised(cfg: ExperimentConfig, dataset: Any = None) -> dict:
    """Train, evaluate and report a classification/regression experiment; returns the metrics dict.

    Writes to ``cfg.train.output_dir``: ``model/`` (best model, `save_pretrained`), ``metrics.json``,
    ``config.yaml`` (resolved), ``labels.json`` and ``training_curves.png``.
    """
    from multimodal.plots import plot_training_curves

    if cfg.model.task == "contrastive":
        raise ValueError("run_supervised handles classification/regression; use the retrieval recipes for contrastive")
    state = process_state()
    out = cfg.train.output_dir
    if state.is_main_process:
        os.makedirs(out, exist_ok=True)
        save_config(cfg, os.path.join(out, "config.yaml"))
    modalities = sorted(cfg.model.encoders)
    t0 = time.time()
    splits = build_splits_for(cfg, modalities, dataset=dataset, progress=state.is_main_process)
    if splits.validation is None:
        state.print("warning: no validation split; the last epoch's model is kept")
    if state.is_main_process and splits.vocab is not None:
        splits.vocab.save(os.path.join(out, "labels.json"))
    fused = _train_and_evaluate(cfg, splits, None, out, main=True)
    if state.is_main_process and splits.vocab is not None:
        splits.vocab.save(os.path.join(out, "model", "labels.json"))  # travels with the exported model
    metrics: dict[str, Any] = {
        "task": cfg.model.task,
        "modalities": modalities,
        "fusion": cfg.model.fusion,
        "num_processes": state.num_processes,
        "labels": splits.vocab.names if splits.vocab is not None else None,
        "split_sizes": {
            name: len(ds) for name, ds in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
            if ds is not None
        },
        "skipped": splits.skip_report(),
        **{k: v for k, v in fused.items() if k not in ("train_log",)},
    }
    eval_split = splits.test or splits.validation
    if eval_split is not None and cfg.model.task != "contrastive":
        metrics["chance"] = chance_metrics(splits.train.labels(), eval_split.labels(), cfg.model.task)
    if cfg.eval.baselines and len(modalities) > 1:
        metrics["baselines"] = {}
        for m in modalities:
            state.print(f"baseline: {m} only")
            base_cfg = copy.deepcopy(cfg)
            base_cfg.train.save_checkpoints = False
            base_cfg.train.resume_from = None
            res = _train_and_evaluate(base_cfg, splits, [m], os.path.join(out, "baselines", m), main=False)
            res.pop("train_log", None)
            metrics["baselines"][m] = res
        metric, _ = default_metric(cfg.model.task)
        split_name = "test" if splits.test is not None else "validation"
        summary = {"fused": fused.get(split_name, {}).get(metric)}
        for m, res in metrics["baselines"].items():
            summary[f"{m}_only"] = res.get(split_name, {}).get(metric)
        metrics["comparison"] = {"split": split_name, "metric": metric, **summary}
    metrics["wall_time_s"] = round(time.time() - t0, 2)
    metrics = _clean(metrics)
    if state.is_main_process:
        with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
        metric_name = fused.get("metric_for_best")
        plot_training_curves(
            fused.get("train_log", []),
            fused.get("history", []),
            os.path.join(out, "training_curves.png"),
            metric=metric_name if metric_name != "loss" else None,
            title=f"{'+'.join(modalities)} ({cfg.model.fusion})",
        )
    state.wait_for_everyone()
    return metrics


def summarize(metrics: dict) -> str:
    """A few human-readable lines about a finished run."""
    lines = []
    for split in ("validation", "test"):
        if split in metrics:
            vals = ", ".join(
                f"{k}={v:.4f}" for k, v in metrics[split].items() if isinstance(v, float) and k != "loss"
            )
            lines.append(f"{split} ({metrics[split].get('num_examples')} examples): {vals}")
    if "comparison" in metrics:
        c = metrics["comparison"]
        parts = [f"{k}={v:.4f}" for k, v in c.items() if isinstance(v, float)]
        lines.append(f"{c['split']} {c['metric']}: " + ", ".join(parts))
    if "chance" in metrics:
        lines.append("chance: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics["chance"].items()))
    skipped = {k: v["total"] for k, v in metrics.get("skipped", {}).items() if v["total"]}
    if skipped:
        lines.append(f"skipped rows: {skipped}")
    return "\n".join(lines)
