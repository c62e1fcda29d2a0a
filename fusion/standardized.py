"""Standardised concatenation: the input of a linear probe, with no trainable parameters of its own."""

from __future__ import annotations

from typing import Optional

import torch

from .base import Features, Fusion, Presence, zero_absent
from .registry import register_fusion


@register_fusion("standardized", "pooled features concatenated and standardised with fixed statistics (the linear "
                 "probe's input; internal: not listed, not selectable in a config)", hidden=True)
class StandardizedConcat(Fusion):
    """Concatenate each modality's pooled features, subtract `shift` and multiply by `scale` (buffers that
    `set_statistics` fills from training data), zero absent modalities (the training mean), and append one
    presence bit per modality when there are several. `output_dim` is ignored: the width is fixed by the
    inputs (sum of widths, plus the presence bits)."""

    def __init__(self, input_dims: dict[str, int], output_dim: Optional[int] = None) -> None:
        dims = {str(m): int(d) for m, d in sorted(input_dims.items())}
        width = sum(dims.values()) + (len(dims) if len(dims) > 1 else 0)
        super().__init__(dims, width)
        total = sum(dims.values())
        self.register_buffer("shift", torch.zeros(total))
        self.register_buffer("scale", torch.ones(total))

    def concat(self, features: Features, present: Presence = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw concatenated features [B, sum(dims)] (absent modalities zero) and presence [B, M]."""
        feats, present = self.prepare(features, present)
        parts = [zero_absent(feats[m].pooled.float(), present[m]) for m in self.modalities]
        keep = torch.stack([present[m] for m in self.modalities], dim=1)
        return torch.cat(parts, dim=1), keep

    def standardize(self, raw: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Standardise raw concatenated features; absent blocks become exact zeros; presence bits appended."""
        x = (raw - self.shift) * self.scale
        blocks, start = [], 0
        for i, m in enumerate(self.modalities):
            width = self.input_dims[m]
            blocks.append(zero_absent(x[:, start:start + width], keep[:, i]))
            start += width
        if len(self.modalities) > 1:
            blocks.append(keep.to(x.dtype))
        return torch.cat(blocks, dim=1)

    def set_statistics(self, raw: torch.Tensor, keep: torch.Tensor, eps: float = 1e-6) -> None:
        """Per-feature mean and 1/std over the rows where each modality is present (as StandardScaler)."""
        shift, scale, start = [], [], 0
        for i, m in enumerate(self.modalities):
            width = self.input_dims[m]
            block = raw[keep[:, i], start:start + width].double()
            if block.shape[0] == 0:
                mean, std = torch.zeros(width, dtype=torch.float64), torch.ones(width, dtype=torch.float64)
            else:
                mean, std = block.mean(0), block.std(0, unbiased=False)
            shift.append(mean)
            scale.append(torch.where(std > eps, 1.0 / std.clamp_min(eps), torch.ones_like(std)))
            start += width
        self.shift.copy_(torch.cat(shift).to(self.shift))
        self.scale.copy_(torch.cat(scale).to(self.scale))

    def forward(self, features: Features, present: Presence = None) -> torch.Tensor:
        """[B, output_dim] standardised features."""
        raw, keep = self.concat(features, present)
        return self.standardize(raw, keep)
