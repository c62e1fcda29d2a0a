"""The contrastive dual-encoder head (CLIP/CLAP style) for cross-modal retrieval."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from encoders.base import EncoderOutput

from .base import Fusion, Presence, stack_presence, zero_absent
from .losses import clip_loss
from .registry import register_fusion

DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


@register_fusion("contrastive", "dual-encoder head: L2-normalised projections trained with symmetric InfoNCE")
class ContrastiveFusion(Fusion):
    """Projects each of exactly two modalities into a shared space and trains them with a CLIP loss.

    `embed` gives L2-normalised `[B, output_dim]` embeddings per modality; `forward` returns the mean of the
    present modalities' embeddings (zeros when none is present); `contrastive_loss` is symmetric InfoNCE
    over the global batch with a learnable temperature (`logit_scale`, log space, clamped to log(100)).
    """

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        projection: str = "linear",
        hidden_dim: Optional[int] = None,
        dropout: float = 0.0,
        init_logit_scale: float = DEFAULT_LOGIT_SCALE,
        max_logit_scale: float = MAX_LOGIT_SCALE,
        gather: bool = True,
    ) -> None:
        super().__init__(input_dims, output_dim)
        if len(self.modalities) != 2:
            raise ValueError(f"contrastive fusion needs exactly two modalities, got {self.modalities}")
        if projection not in ("linear", "mlp"):
            raise ValueError(f"contrastive fusion: projection must be 'linear' or 'mlp', got {projection!r}")
        hidden = None
        if projection == "mlp":
            hidden = int(hidden_dim or max(self.input_dims.values()))
        self.config_kwargs = {
            "projection": projection,
            "hidden_dim": hidden,
            "dropout": float(dropout),
            "init_logit_scale": float(init_logit_scale),
            "max_logit_scale": float(max_logit_scale),
            "gather": bool(gather),
        }
        self.max_logit_scale = float(max_logit_scale)
        self.gather = bool(gather)
        self.projections = nn.ModuleDict()
        for m, d in self.input_dims.items():
            if projection == "linear":
                self.projections[m] = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, output_dim, bias=False))
            else:
                self.projections[m] = nn.Sequential(
                    nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, output_dim)
                )
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def clamped_logit_scale(self) -> torch.Tensor:
        """`logit_scale` clamped to `max_logit_scale` (log space)."""
        return self.logit_scale.clamp(max=self.max_logit_scale)

    def embed(self, features: dict[str, EncoderOutput]) -> dict[str, torch.Tensor]:
        """L2-normalised embedding `[B, output_dim]` of each modality."""
        self.presence(features, None)
        return {m: F.normalize(self.projections[m](features[m].pooled), dim=-1) for m in self.modalities}

    def fuse_embeddings(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Mean of the present modalities' embeddings per sample (zeros where none is present)."""
        keep = stack_presence(present, self.modalities)
        total = sum(zero_absent(embeddings[m], present[m]) for m in self.modalities)
        count = keep.sum(dim=1, keepdim=True).clamp_min(1).to(total.dtype)
        return total / count

    def forward(self, features: dict[str, EncoderOutput], present: Presence = None) -> torch.Tensor:
        """Mean of the present modalities' normalised embeddings, `[B, output_dim]`."""
        present = self.presence(features, present)
        return self.fuse_embeddings(self.embed(features), present)

    def contrastive_loss(
        self,
        features: dict[str, EncoderOutput],
        present: Presence = None,
        embeddings: Optional[dict[str, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Symmetric InfoNCE; pairs with an absent modality are left out.

        In training mode (and with `gather`) the loss spans the global batch across processes; in eval mode
        it uses the local batch only, so an evaluation run on a single rank cannot hang in a collective.
        """
        present = self.presence(features, present)
        if embeddings is None:
            embeddings = self.embed(features)
        a, b = self.modalities
        return clip_loss(
            embeddings[a],
            embeddings[b],
            self.clamped_logit_scale(),
            gather=self.gather and self.training,
            valid=present[a] & present[b],
        )

    def no_weight_decay(self) -> set[str]:
        """The temperature is never decayed."""
        return {"logit_scale"}
