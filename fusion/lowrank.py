"""Low-rank multimodal fusion (Liu et al., 2018): a rank-r factorised outer-product tensor fusion."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Features, Fusion, Presence, zero_absent
from .registry import register_fusion


@register_fusion(
    "lowrank_tensor", "low-rank multimodal fusion: rank-r factors of [x, 1] multiplied across modalities"
)
class LowRankTensorFusion(Fusion):
    """LMF: out = sum_r w_r * prod_m (W_m^(r) [x_m; 1]) + b.

    An absent modality's features are replaced by zeros before the constant 1 is appended, so it
    contributes only the factor of the constant-1 vector and its values cannot leak.
    """

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        rank: int = 4,
        pre_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dims, output_dim)
        if rank < 1:
            raise ValueError(f"lowrank_tensor fusion: rank must be >= 1, got {rank}")
        self.rank = int(rank)
        self.config_kwargs = {"rank": int(rank), "pre_norm": bool(pre_norm), "dropout": float(dropout)}
        self.norms = nn.ModuleDict(
            {m: (nn.LayerNorm(d) if pre_norm else nn.Identity()) for m, d in self.input_dims.items()}
        )
        self.factors = nn.ParameterDict()
        for m, d in self.input_dims.items():
            factor = torch.empty(rank, d + 1, output_dim)
            nn.init.normal_(factor, std=1.0 / math.sqrt(d + 1))
            with torch.no_grad():
                factor[:, -1, :] = 1.0 + 0.1 * torch.randn(
                    rank, output_dim
                )  # the constant-1 row starts near 1
            self.factors[m] = nn.Parameter(factor)
        self.fusion_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.fusion_bias = nn.Parameter(torch.zeros(output_dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: Features, present: Presence = None) -> torch.Tensor:
        """Fuse pooled features into `[B, output_dim]`."""
        features, present = self.prepare(features, present)
        product = None
        for m in self.modalities:
            x = zero_absent(self.norms[m](zero_absent(features[m].pooled, present[m])), present[m])
            x = self.dropout(x)
            z = torch.cat([x, torch.ones_like(x[:, :1])], dim=-1)  # [B, d+1]
            f = torch.einsum("bd,rdo->bro", z, self.factors[m])
            product = f if product is None else product * f
        return torch.einsum("r,bro->bo", self.fusion_weights, product) + self.fusion_bias
