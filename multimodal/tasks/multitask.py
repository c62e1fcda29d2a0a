"""Several tasks on one fused representation: task ``multitask``, configured by ``model.tasks``::

    model:
      task: multitask
      tasks:
        emotion: {column: emotion, task: single_label, weight: 1.0}
        topics:  {column: topics, task: multi_label, weight: 0.5}
        arousal: {column: arousal, task: regression, weight: 2.0}

Each task has its own head on the fused vector, its own loss weight and its own metrics (``<task>/accuracy``,
``<task>/macro_f1``, ``<task>/mse``, ... and ``<task>/loss``). A row may lack labels for some tasks (an empty
cell): those tasks skip it in the loss and in the metrics. The model is selected by the weighted validation
``loss`` unless ``train.metric_for_best`` names a task's metric (e.g. ``emotion/macro_f1``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from multimodal.config.schema import ConfigError, ExperimentConfig
from multimodal.data.dataset import MultimodalDataset
from multimodal.data.limits import MediaLimits
from multimodal.data.multitask import TARGET_KINDS, MultiTaskDataset, Target, fit_targets
from multimodal.data.splits import DataSplits, build_splits
from multimodal.evaluation.metrics import (
    CLASSIFICATION_METRICS,
    classification_metrics,
    confusion,
    metric_mode,
)
from multimodal.evaluation.report import EvalResult
from multimodal.models.multitask import MultiTaskHead, MultiTaskModel
from multimodal.registry import register_task
from multimodal.tasks.base import Task, apply_freezing, build_fusion, create_encoders, modality_columns

TASK_KEYS = ("column", "task", "weight", "labels", "width")


def parse_targets(cfg: ExperimentConfig) -> list[Target]:
    """`Target`s from ``model.tasks``; a bad entry is a `ConfigError` naming ``model.tasks.<name>.<key>``."""
    tasks = cfg.model.tasks
    if not tasks:
        raise ConfigError("model.task=multitask needs model.tasks: {name: {column, task, weight}, ...}")
    targets = []
    for name, spec in tasks.items():
        key = f"model.tasks.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{key}: expected a mapping {{column, task, weight}}, got {spec!r}")
        unknown = sorted(set(spec) - set(TASK_KEYS))
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {unknown}; valid: {', '.join(TASK_KEYS)}")
        kind = spec.get("task", "single_label")
        if kind not in TARGET_KINDS:
            raise ConfigError(f"{key}.task: invalid choice {kind!r}; choose one of {', '.join(TARGET_KINDS)}")
        column = spec.get("column", name)
        if not isinstance(column, str) or not column:
            raise ConfigError(f"{key}.column: expected a column name, got {column!r}")
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"{key}.weight: expected a number >= 0, got {weight!r}")
        labels = spec.get("labels")
        if labels is not None and (not isinstance(labels, list) or kind == "regression"):
            raise ConfigError(f"{key}.labels: a list of class names, for single_label / multi_label tasks only")
        width = spec.get("width")
        if width is not None and (kind != "regression" or not isinstance(width, int) or width < 1):
            raise ConfigError(f"{key}.width: a positive number of values, for regression tasks only")
        targets.append(Target(str(name), column, kind, float(weight), labels, width, cfg.data.multi_label_separator))
    return targets


class MultiTask(Task):
    """Several heads (single-label, multi-label, regression) on one fused representation; labels may be missing."""

    label_type = "multitask"  # the collate function stacks the packed float targets
    uses_fusion = True
    supports_baselines = True
    batch_loss = False

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        self.targets = parse_targets(cfg)

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        parse_targets(cfg)
        if cfg.data.shots_per_class:
            raise ConfigError("data.shots_per_class samples per class of one label column; model.task=multitask has "
                              "several: drop one of the two")

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> Optional[set[str]]:
        names = {"loss"}
        for t in parse_targets(cfg):
            names |= {f"{t.name}/{m}" for m in (*CLASSIFICATION_METRICS[t.kind], "loss")}
        return names

    def default_metric(self) -> str:
        return "loss"

    def metric_mode(self, name: str) -> str:
        return metric_mode(name.rsplit("/", 1)[-1])

    # -- data ---------------------------------------------------------------------------------
    def label_column(self) -> Optional[str]:
        return None

    def build_splits(self, dataset: Any = None, progress: bool = True) -> DataSplits:
        splits = build_splits(self.cfg.data, modality_columns(self.cfg, self.modalities), None, None,
                              self.group_column(), dataset=dataset, progress=progress)
        fit_targets(self.targets, splits.train)
        wrapped = {n: MultiTaskDataset.wrap(d, self.targets) if d is not None else None
                   for n, d in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))}
        splits.train, splits.validation, splits.test = wrapped["train"], wrapped["validation"], wrapped["test"]
        splits.notes.append("tasks: " + ", ".join(f"{t.name} ({t.kind}, column {t.column!r}, weight {t.weight})"
                                                  for t in self.targets))
        return splits

    def dataset_from_rows(self, rows: list[dict], base_dir: Optional[str], source: str,
                          labels: Optional[list[str]] = None, progress: bool = True) -> MultimodalDataset:
        data = self.cfg.data
        base = MultimodalDataset(rows, modality_columns(self.cfg, self.modalities), None, None, None, base_dir, source,
                                 data.on_bad_sample, data.required_modalities, data.multi_label_separator, data.validate,
                                 progress=progress, limits=MediaLimits.from_config(data))
        for t in self.targets:  # a saved model's config fixes the classes and widths
            if t.vocab is None and t.kind != "regression":
                fit_targets([t], base)
        return MultiTaskDataset.wrap(base, self.targets)

    # -- model --------------------------------------------------------------------------------
    def build_model(self, splits: Optional[DataSplits], modalities: Optional[list[str]] = None) -> nn.Module:
        mcfg = self.cfg.model
        encoders = create_encoders(self.cfg, modalities)
        fusion = build_fusion(self.cfg, encoders)
        # The fitted targets travel with the data (a cross-validation fold's task never built the splits itself).
        targets = splits.train.targets if splits is not None and isinstance(splits.train, MultiTaskDataset) else self.targets
        tasks = [{"name": t.name, "num_outputs": t.num_outputs, **t.config()} for t in targets]
        head = MultiTaskHead(fusion.output_dim, tasks, mcfg.head_hidden_dim, mcfg.head_dropout)
        model = MultiTaskModel(encoders, fusion=fusion, head=head, modality_dropout=mcfg.modality_dropout)
        return apply_freezing(model, self.cfg)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, preds: dict[str, torch.Tensor], dataset: MultimodalDataset, model: nn.Module,
                 full: bool = True) -> EvalResult:
        logits, labels = preds["logits"], preds["labels"].float()
        head = model.head
        metrics: dict[str, Any] = {}
        result = EvalResult(metrics)
        if len(labels):
            losses = head.task_losses(logits, labels)
            metrics["loss"] = float(head.loss(logits, labels))
        for t, cols, slots in head.slices():
            name = t["name"]
            y, out = labels[:, slots], logits[:, cols]
            valid = ~torch.isnan(y).any(dim=1)
            metrics[f"{name}/num_labelled"] = int(valid.sum())
            if not bool(valid.any()):
                continue
            y, out = y[valid], out[valid]
            if t["task"] == "single_label":
                y = y[:, 0].long()
            elif t["task"] == "regression" and y.shape[1] == 1:
                y, out = y[:, 0], out[:, 0]
            task_metrics = classification_metrics(out, y, t["task"])
            task_metrics.pop("num_examples", None)
            metrics.update({f"{name}/{k}": v for k, v in task_metrics.items()})
            metrics[f"{name}/loss"] = float(losses[name])
            if full and t["task"] == "single_label" and result.confusion is None:
                result.confusion, result.class_names = confusion(out, y), t.get("labels")
                result.notes.append(f"Confusion matrix: task {name!r}.")
        return result

    @classmethod
    def headline(cls, metrics: dict[str, Any]) -> dict[str, float]:
        return {k: v for k, v in metrics.items() if isinstance(v, float) and not k.endswith("/loss")}


register_task("multitask", MultiTask)
