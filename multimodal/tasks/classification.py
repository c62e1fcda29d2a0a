"""Classification and regression on a fused representation: single-label, multi-label, regression.

One class per label type, registered under the label type's name: `ClassificationTask` (single_label),
`MultiLabelTask` and `RegressionTask`. A user subclass registered under any name keeps its class's
`label_type` (set it on the subclass to learn multi-label targets or values).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import nn

from multimodal.config.schema import ConfigError, ExperimentConfig
from multimodal.data.dataset import MultimodalDataset
from multimodal.data.splits import DataSplits
from multimodal.evaluation.metrics import (
    CLASSIFICATION_METRICS,
    chance_metrics,
    classification_metrics,
    confusion,
)
from multimodal.evaluation.report import EvalResult
from multimodal.models import MultimodalModel, TaskHead
from multimodal.registry import register_task
from multimodal.tasks.base import Task, apply_freezing, build_fusion, create_encoders

DEFAULT_METRIC = {"single_label": "macro_f1", "multi_label": "micro_f1", "regression": "mse"}


class ClassificationTask(Task):
    """Encoders -> fusion -> head, trained on a label column (single-label, multi-label or regression).

    single_label: cross-entropy; multi_label: binary cross-entropy (labels joined by
    ``data.multi_label_separator`` or given as lists); regression: MSE on one or more numeric targets.
    """

    label_type = "single_label"
    uses_fusion = True
    supports_baselines = True
    batch_loss = False  # the loss is recomputed exactly from the gathered logits

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        legacy = cfg.model.task
        if type(self) is ClassificationTask and legacy in ("multi_label", "regression"):
            # Before one class per label type, ClassificationTask(cfg) read its label type from model.task.
            warnings.warn(f"ClassificationTask(cfg) for model.task={legacy!r} is deprecated: use "
                          f"multimodal.get_task({legacy!r})(cfg)", DeprecationWarning, stacklevel=2)
            self.label_type = legacy

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        if not cfg.data.label_column:
            raise ConfigError(f"model.task={cfg.model.task!r} learns from labels: set data.label_column")

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> Optional[set[str]]:
        return {*CLASSIFICATION_METRICS[cls.label_type], "loss"}

    def default_metric(self) -> str:
        return DEFAULT_METRIC[self.label_type]

    def num_outputs(self, splits: DataSplits) -> Optional[int]:
        if self.label_type in ("single_label", "multi_label"):
            return len(splits.vocab)
        labels = splits.train.labels()
        return int(labels.shape[-1]) if labels.ndim > 1 else 1

    def build_model(self, splits: Optional[DataSplits], modalities: Optional[list[str]] = None,
                    num_outputs: Optional[int] = None) -> nn.Module:
        mcfg = self.cfg.model
        encoders = create_encoders(self.cfg, modalities)
        fusion = build_fusion(self.cfg, encoders)
        outputs = num_outputs if num_outputs is not None else self.num_outputs(splits)
        head = TaskHead(fusion.output_dim, outputs, label_type=self.label_type, hidden_dim=mcfg.head_hidden_dim,
                        dropout=mcfg.head_dropout)
        model = MultimodalModel(encoders, fusion=fusion, head=head, modality_dropout=mcfg.modality_dropout)
        return apply_freezing(model, self.cfg)

    def evaluate(self, preds: dict[str, torch.Tensor], dataset: MultimodalDataset, model: nn.Module,
                 full: bool = True) -> EvalResult:
        names = dataset.vocab.names if dataset.vocab is not None else None
        logits, labels = preds["logits"], preds["labels"]
        metrics: dict[str, Any] = classification_metrics(logits, labels, self.label_type)
        head = getattr(model, "head", None)
        if head is not None and len(labels):
            metrics["loss"] = float(head.loss(logits, labels))  # exact: over the gathered, de-duplicated examples
        result = EvalResult(metrics)
        if full and self.label_type == "single_label" and len(labels):
            result.confusion, result.class_names = confusion(logits, labels), names
            metrics["confusion_matrix"], metrics["class_names"] = result.confusion, names
        return result

    def chance(self, splits: DataSplits, dataset: MultimodalDataset) -> dict[str, float]:
        return chance_metrics(splits.train.labels(), dataset.labels(), self.label_type)


class MultiLabelTask(ClassificationTask):
    """Multi-label classification on a fused representation (binary cross-entropy per class)."""

    label_type = "multi_label"


class RegressionTask(ClassificationTask):
    """Regression of one or more numeric targets on a fused representation (MSE)."""

    label_type = "regression"


register_task("single_label", ClassificationTask)
register_task("multi_label", MultiLabelTask)
register_task("regression", RegressionTask)
