"""Few-shot and zero-shot classification with a two-tower model: task ``prompt_classifier``.

The classified modality is the one non-text entry of ``model.encoders`` (image or audio). The two-tower model
comes from ``model.init_from`` (a folder saved by the retrieval task, e.g. ``outputs/image_text_retrieval/model``)
or, without it, is built fresh from ``model.encoders`` (sensible only for towers already aligned, CLIP style).
``model.classifier_init: prompts`` starts the class weights at the text tower's average embedding of the
prompt templates (``retrieval.templates``, default per modality) for each class name; ``random`` starts them
at random with the same norm. ``train.epochs: 0`` evaluates the prompt weights as they are: the pure
zero-shot classifier. ``data.shots_per_class: K`` trains on K examples per class. Metrics, report and
``multimodal-evaluate --task classification`` are those of single-label classification.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.config.schema import ConfigError, ExperimentConfig
from multimodal.data.splits import DataSplits
from multimodal.evaluation.metrics import CLASSIFICATION_METRICS
from multimodal.models.base import load_model
from multimodal.models.dual import DualEncoder
from multimodal.models.prompt import PromptClassifier
from multimodal.registry import register_task
from multimodal.tasks.base import apply_freezing, create_encoders
from multimodal.tasks.classification import ClassificationTask
from multimodal.tasks.retrieval import RetrievalTask, read_templates


def classified_modality(cfg: ExperimentConfig) -> str:
    """The one non-text modality of ``model.encoders``."""
    others = sorted(m for m in cfg.model.encoders if m != "text")
    if len(others) != 1:
        raise ConfigError(f"model.task=prompt_classifier classifies one non-text modality; model.encoders has "
                          f"{sorted(cfg.model.encoders)}")
    return others[0]


class PromptClassifierTask(ClassificationTask):
    """Single-label classification of one tower of a two-tower model, its head initialised from class prompts."""

    label_type = "single_label"
    uses_fusion = False
    supports_baselines = False
    allows_zero_epochs = True  # train.epochs=0: the pure zero-shot classifier

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        super().check_config(cfg)
        classified_modality(cfg)
        if not cfg.model.init_from and "text" not in cfg.model.encoders:
            raise ConfigError("model.task=prompt_classifier embeds the class prompts with a text tower: give "
                              "model.init_from (a saved two-tower model) or a text entry in model.encoders")

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> Optional[set[str]]:
        return {*CLASSIFICATION_METRICS[cls.label_type], "loss"}

    @property
    def modalities(self) -> list[str]:
        """Only the classified modality is read from the data (the text tower embeds the prompts)."""
        return [classified_modality(self.cfg)]

    def two_tower(self) -> DualEncoder:
        """The two-tower model the classifier starts from."""
        mcfg = self.cfg.model
        if mcfg.init_from:
            try:
                model = load_model(mcfg.init_from)
            except (FileNotFoundError, ValueError) as err:
                raise ConfigError(f"model.init_from: {err}") from None
            if not isinstance(model, DualEncoder) or "text" not in model.encoders:
                raise ConfigError(f"model.init_from: {mcfg.init_from!r} holds a {type(model).__name__} with towers "
                                  f"{model.modalities}; prompt_classifier needs a two-tower model with a text tower")
            return model
        rcfg = self.cfg.retrieval
        return DualEncoder(create_encoders(self.cfg), embed_dim=mcfg.fusion_dim, projection=rcfg.projection,
                           hidden_dim=rcfg.projection_hidden_dim)

    def build_model(self, splits: Optional[DataSplits], modalities: Optional[list[str]] = None) -> nn.Module:
        modality = classified_modality(self.cfg)
        dual = self.two_tower()
        if modality not in dual.encoders:
            raise ConfigError(f"model.init_from: the two-tower model has no {modality!r} tower ({dual.modalities})")
        names = list(splits.vocab.names)
        if self.cfg.model.classifier_init == "prompts":
            templates = read_templates(self.cfg.retrieval.templates, modality)
            weights = RetrievalTask.class_embeddings(dual, names, templates)
        else:
            generator = torch.Generator().manual_seed(self.cfg.train.seed)
            weights = F.normalize(torch.randn(len(names), dual.embed_dim, generator=generator), dim=-1)
        model = PromptClassifier.from_dual(dual, modality, weights, names, self.cfg.model.classifier_init)
        return apply_freezing(model, self.cfg)


register_task("prompt_classifier", PromptClassifierTask)
