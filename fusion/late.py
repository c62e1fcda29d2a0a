"""Late fusion: one head per modality, outputs averaged (plainly or with learned weights) over present ones."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import Features, Fusion, Presence, masked_softmax, mlp, stack_presence, zero_absent
from .registry import register_fusion


@register_fusion(
    "late", "one head per modality; outputs averaged over present modalities (mean or learned weights)"
)
class LateFusion(Fusion):
    """Per-modality heads whose outputs are combined by a mean or learned softmax weights over present modalities."""

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        combine: str = "mean",
        hidden_dim: Optional[int] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dims, output_dim)
        if combine not in ("mean", "learned"):
            raise ValueError(f"late fusion: combine must be 'mean' or 'learned', got {combine!r}")
        self.combine = combine
        self.config_kwargs = {"combine": combine, "hidden_dim": hidden_dim, "dropout": float(dropout)}
        self.heads = nn.ModuleDict(
            {m: mlp(d, hidden_dim, output_dim, dropout) for m, d in self.input_dims.items()}
        )
        n = len(self.modalities)
        if combine == "learned":
            self.modality_logits = nn.Parameter(torch.zeros(n))
        else:
            self.register_buffer("modality_logits", torch.zeros(n), persistent=False)

    def forward(self, features: Features, present: Presence = None) -> torch.Tensor:
        """Weighted mean of the present modalities' head outputs, `[B, output_dim]` (zeros if none present)."""
        features, present = self.prepare(features, present)
        outs = torch.stack(
            [
                zero_absent(self.heads[m](zero_absent(features[m].pooled, present[m])), present[m])
                for m in self.modalities
            ],
            dim=1,
        )  # [B, M, D]
        keep = stack_presence(present, self.modalities)  # [B, M]
        logits = self.modality_logits.to(outs.dtype).unsqueeze(0).expand(keep.shape[0], -1)
        weights = masked_softmax(logits, keep, dim=1)
        return (weights.unsqueeze(-1) * outs).sum(dim=1)

    def no_weight_decay(self) -> set[str]:
        """The modality weights are a 1-d temperature-like vector: no decay."""
        return {"modality_logits"} if self.combine == "learned" else set()
