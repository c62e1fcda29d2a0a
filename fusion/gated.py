"""Gated multimodal unit (Arevalo et al., 2017), generalised to N modalities with a softmax gate."""

from __future__ import annotations

import torch
from torch import nn

from .base import Features, Fusion, Presence, masked_softmax, stack_presence, zero_absent
from .registry import register_fusion


@register_fusion("gated", "gated multimodal unit: tanh per modality, softmax gate over present modalities")
class GatedFusion(Fusion):
    """GMU: h_m = tanh(W_m x_m); z = softmax_m(W_z [x_1..x_M, presence]) per output unit; out = sum_m z_m h_m.

    With two modalities the softmax gate equals the paper's sigmoid gate z, 1 - z. Absent modalities get
    gate weight exactly 0 and the remaining weights renormalise over the present ones.
    """

    def __init__(self, input_dims: dict[str, int], output_dim: int, dropout: float = 0.0) -> None:
        super().__init__(input_dims, output_dim)
        self.config_kwargs = {"dropout": float(dropout)}
        self.hidden = nn.ModuleDict({m: nn.Linear(d, output_dim) for m, d in self.input_dims.items()})
        n = len(self.modalities)
        self.gate = nn.Linear(sum(self.input_dims.values()) + n, n * output_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: Features, present: Presence = None) -> torch.Tensor:
        """Gate-weighted sum of per-modality tanh features, `[B, output_dim]`."""
        features, present = self.prepare(features, present)
        xs = [zero_absent(features[m].pooled, present[m]) for m in self.modalities]
        keep = stack_presence(present, self.modalities)  # [B, M]
        h = torch.stack(
            [torch.tanh(self.hidden[m](x)) for m, x in zip(self.modalities, xs)], dim=1
        )  # [B, M, D]
        gate_in = torch.cat(xs + [keep.to(xs[0].dtype)], dim=-1)
        logits = self.gate(gate_in).view(keep.shape[0], len(self.modalities), self.output_dim)
        z = masked_softmax(logits, keep.unsqueeze(-1), dim=1)
        return self.dropout((z * h).sum(dim=1))
