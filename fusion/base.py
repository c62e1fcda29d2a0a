"""The fusion contract: a dict of encoder outputs plus presence masks in, one feature vector out."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from encoders.base import EncoderOutput

Presence = Optional[dict[str, torch.Tensor]]
"""Per-modality bool tensors [B]: True where the sample has that modality. None means all present."""


class Fusion(nn.Module):
    """Base class for fusion heads.

    `forward(features, present)` returns `[B, output_dim]`. A fusion whose `requires_tokens` is True
    reads `EncoderOutput.tokens`/`mask`; the others read `pooled`. A modality absent for a sample
    (``present[m][i] is False``) must not influence that sample's output.
    """

    requires_tokens: bool = False

    def __init__(self, input_dims: dict[str, int], output_dim: int) -> None:
        super().__init__()
        if not input_dims:
            raise ValueError("input_dims must name at least one modality")
        self.input_dims = dict(sorted(input_dims.items()))
        self.modalities = list(self.input_dims)
        self.output_dim = int(output_dim)

    def forward(
        self, features: dict[str, EncoderOutput], present: Presence = None
    ) -> torch.Tensor:  # pragma: no cover - abstract
        """Fuse the modalities into `[B, output_dim]`."""
        raise NotImplementedError

    def presence(self, features: dict[str, EncoderOutput], present: Presence) -> dict[str, torch.Tensor]:
        """Fill in all-True masks for modalities the caller did not mask; check the keys."""
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise KeyError(f"{type(self).__name__} expects modalities {self.modalities}; missing {missing}")
        out = {}
        for m in self.modalities:
            pooled = features[m].pooled
            mask = None if present is None else present.get(m)
            if mask is None:
                mask = torch.ones(pooled.shape[0], dtype=torch.bool, device=pooled.device)
            out[m] = mask.to(device=pooled.device, dtype=torch.bool)
        return out
