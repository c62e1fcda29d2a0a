"""Concatenation fusion: project each modality, zero absent ones, append presence bits, MLP."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import Features, Fusion, Presence, stack_presence, zero_absent
from .registry import register_fusion


@register_fusion("concat", "project each modality, zero absent ones, concatenate with presence bits, MLP")
class ConcatFusion(Fusion):
    """Early fusion by concatenation of per-modality projections (absent ones zeroed) plus presence bits."""

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        proj_dim: Optional[int] = None,
        hidden_dim: Optional[int] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dims, output_dim)
        proj_dim = int(proj_dim or output_dim)
        hidden_dim = int(hidden_dim or 2 * output_dim)
        self.config_kwargs = {"proj_dim": proj_dim, "hidden_dim": hidden_dim, "dropout": float(dropout)}
        self.proj = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(d, proj_dim), nn.LayerNorm(proj_dim))
                for m, d in self.input_dims.items()
            }
        )
        n = len(self.modalities)
        self.mlp = nn.Sequential(
            nn.Linear(n * proj_dim + n, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, features: Features, present: Presence = None) -> torch.Tensor:
        """Fuse pooled features into `[B, output_dim]`."""
        features, present = self.prepare(features, present)
        parts = []
        for m in self.modalities:
            x = zero_absent(features[m].pooled, present[m])
            parts.append(zero_absent(self.proj[m](x), present[m]))
        bits = stack_presence(present, self.modalities).to(parts[0].dtype)
        return self.mlp(torch.cat(parts + [bits], dim=-1))
