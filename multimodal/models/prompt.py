"""`PromptClassifier`: one tower of a two-tower model plus a cosine classifier that can start as its zero-shot head.

The tower and its projection come from a `DualEncoder`; the class weights ``[C, embed_dim]`` start either from
the text tower's embeddings of prompt templates for each class name (the zero-shot classifier, CLIP style) or
at random with the same row norm. Logits are ``exp(logit_scale) * normalize(project(x)) @ W.T``, so with the
prompt weights and no training the model *is* the zero-shot classifier; fine-tuning then moves the weights
(and the projection, and the tower unless it is frozen) on labelled examples.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from encoders import Encoder
from encoders.base import EncoderOutput
from multimodal.models.base import EncoderModel, register_model_type
from multimodal.models.compat import positional_deprecated
from multimodal.models.dual import DualEncoder
from multimodal.models.heads import LabelTyped
from multimodal.models.output import ModelOutput


def projection_module(kind: str, in_dim: int, embed_dim: int, hidden_dim: Optional[int], dropout: float) -> nn.Module:
    """The same layers as a `ContrastiveHead` projection, so its weights load into it."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, embed_dim, bias=False))
    hidden = int(hidden_dim or in_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, embed_dim))


class PromptHead(LabelTyped, nn.Module):
    """Projection into the shared space, a learnable temperature and class weights; single-label loss."""

    label_type = "single_label"

    def __init__(self, in_dim: int, embed_dim: int, num_outputs: int, projection: str = "linear",
                 hidden_dim: Optional[int] = None, dropout: float = 0.0, logit_scale: float = 4.6052,
                 class_names: Optional[list[str]] = None, init: str = "prompts") -> None:
        super().__init__()
        if num_outputs < 2:
            raise ValueError("PromptHead: a classifier needs at least 2 classes")
        self.in_dim, self.embed_dim, self.num_outputs = int(in_dim), int(embed_dim), int(num_outputs)
        self.projection_kind, self.hidden_dim, self.dropout_p = projection, hidden_dim, float(dropout)
        self.class_names, self.init = list(class_names or []), init
        self.projection = projection_module(projection, self.in_dim, self.embed_dim, hidden_dim, dropout)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.class_weights = nn.Parameter(F.normalize(torch.randn(self.num_outputs, self.embed_dim), dim=-1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Class logits `[B, C]` of pooled tower features `[B, in_dim]`."""
        z = F.normalize(self.projection(pooled), dim=-1)
        return self.logit_scale.exp() * z @ self.class_weights.t()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against integer labels `[B]`."""
        return F.cross_entropy(logits, labels.to(logits.device).long())

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable."""
        return {"in_dim": self.in_dim, "embed_dim": self.embed_dim, "num_outputs": self.num_outputs,
                "projection": self.projection_kind, "hidden_dim": self.hidden_dim, "dropout": self.dropout_p,
                "logit_scale": float(self.logit_scale.detach()), "class_names": self.class_names, "init": self.init}

    def no_weight_decay(self) -> set[str]:
        """Neither the temperature nor the class weights (decay would shrink the prompt directions to zero)."""
        return {"logit_scale", "class_weights"}


@register_model_type("prompt_classifier")
class PromptClassifier(EncoderModel):
    """One encoder (the classified modality) and a `PromptHead`; `from_dual` builds it from a two-tower model."""

    @positional_deprecated("head")
    def __init__(self, encoders: dict[str, Encoder], *, head: PromptHead) -> None:
        super().__init__(encoders)
        if len(encoders) != 1:
            raise ValueError(f"PromptClassifier classifies one modality; got encoders {sorted(encoders)}")
        self.modality = next(iter(encoders))
        if int(encoders[self.modality].output_dim) != head.in_dim:
            raise ValueError(f"the {self.modality} encoder outputs {encoders[self.modality].output_dim} features, "
                             f"the head expects {head.in_dim}")
        self.head = head

    @classmethod
    def from_dual(cls, dual: DualEncoder, modality: str, class_weights: torch.Tensor, class_names: list[str],
                  init: str = "prompts") -> PromptClassifier:
        """`modality`'s tower and projection from `dual`, its temperature, and `class_weights` `[C, embed_dim]`."""
        if modality not in dual.encoders:
            raise KeyError(f"the two-tower model has no {modality!r} tower; towers are {dual.modalities}")
        kwargs = dual.head.config_kwargs
        head = PromptHead(int(dual.encoders[modality].output_dim), dual.embed_dim, len(class_names),
                          kwargs["projection"], kwargs.get("hidden_dim"), kwargs.get("dropout", 0.0),
                          float(dual.logit_scale.detach()), class_names, init)
        head.projection.load_state_dict(dual.head.projections[modality].state_dict())
        with torch.no_grad():
            head.class_weights.copy_(class_weights)
        return cls({modality: dual.encoders[modality]}, head=head)

    def forward(self, inputs: Optional[dict[str, dict[str, torch.Tensor]]] = None,
                present: Optional[dict[str, torch.Tensor]] = None, labels: Optional[torch.Tensor] = None,
                features: Optional[dict[str, EncoderOutput]] = None) -> ModelOutput:
        """Encode the modality (or take its cached features), classify, and with `labels` the loss."""
        feats = self._features(inputs or {}, features, required=[self.modality])
        self.check_present(present)
        logits = self.head(feats[self.modality].pooled)
        loss = self.head.loss(logits, labels) if labels is not None else None
        return ModelOutput(loss=loss, logits=logits, features=feats)

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable description that `from_pretrained` rebuilds with no network."""
        return {**super().get_config(), "head": self.head.get_config()}

    @classmethod
    def _from_config(cls, config: dict[str, Any], encoders: dict[str, Encoder]) -> PromptClassifier:
        if not isinstance(config.get("head"), dict):
            raise ValueError("config.json: a prompt_classifier needs a 'head' object")
        return cls(encoders, head=PromptHead(**config["head"]))
