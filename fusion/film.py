"""FiLM fusion (Perez et al., 2018): one modality produces gamma/beta that modulate the others' features."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import Features, Fusion, Presence, stack_presence, zero_absent
from .registry import register_fusion


@register_fusion("film", "FiLM: a conditioner modality (default text) scales and shifts the other modalities")
class FiLMFusion(Fusion):
    """Feature-wise linear modulation of each target modality by the conditioner.

    target_t = GELU(gamma_t * LN(W_t x_t) + beta_t) with (gamma_t - 1, beta_t) = MLP(x_c). An absent
    conditioner gives identity modulation (gamma = 1, beta = 0); an absent target is zeroed. The output
    MLP sees the modulated targets, a projection of the conditioner (zeroed when absent) and presence bits.
    """

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        conditioner: Optional[str] = None,
        hidden_dim: Optional[int] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dims, output_dim)
        if len(self.modalities) < 2:
            raise ValueError("film fusion needs at least two modalities (a conditioner and a target)")
        if conditioner is None:
            conditioner = "text" if "text" in self.input_dims else self.modalities[0]
        if conditioner not in self.input_dims:
            raise ValueError(f"film fusion: conditioner {conditioner!r} is not one of {self.modalities}")
        hidden_dim = int(hidden_dim or output_dim)
        self.conditioner = conditioner
        self.targets = [m for m in self.modalities if m != conditioner]
        self.hidden_dim = hidden_dim
        self.config_kwargs = {"conditioner": conditioner, "hidden_dim": hidden_dim, "dropout": float(dropout)}
        d_c = self.input_dims[conditioner]
        self.film_generator = nn.Sequential(
            nn.Linear(d_c, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 2 * hidden_dim * len(self.targets))
        )
        # Start close to identity modulation.
        nn.init.normal_(self.film_generator[-1].weight, std=1e-2)
        nn.init.zeros_(self.film_generator[-1].bias)
        self.target_proj = nn.ModuleDict(
            {
                t: nn.Sequential(nn.Linear(self.input_dims[t], hidden_dim), nn.LayerNorm(hidden_dim))
                for t in self.targets
            }
        )
        self.cond_proj = nn.Linear(d_c, hidden_dim)
        n = len(self.modalities)
        self.out = nn.Sequential(
            nn.Linear(n * hidden_dim + n, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, features: Features, present: Presence = None) -> torch.Tensor:
        """Modulate the targets by the conditioner and fuse into `[B, output_dim]`."""
        features, present = self.prepare(features, present)
        c_present = present[self.conditioner]
        x_c = zero_absent(features[self.conditioner].pooled, c_present)
        params = self.film_generator(x_c).view(x_c.shape[0], len(self.targets), 2, self.hidden_dim)
        d_gamma = zero_absent(params[:, :, 0], c_present)  # absent conditioner -> gamma = 1
        beta = zero_absent(params[:, :, 1], c_present)  # absent conditioner -> beta = 0
        parts = []
        for i, t in enumerate(self.targets):
            h = self.target_proj[t](zero_absent(features[t].pooled, present[t]))
            h = torch.nn.functional.gelu((1.0 + d_gamma[:, i]) * h + beta[:, i])
            parts.append(zero_absent(h, present[t]))
        parts.append(zero_absent(self.cond_proj(x_c), c_present))
        bits = stack_presence(present, self.modalities).to(x_c.dtype)
        return self.out(torch.cat(parts + [bits], dim=-1))
