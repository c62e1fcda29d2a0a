"""The contrastive head of a two-tower (CLIP/CLAP-style) model: projections, temperature, InfoNCE.

Not a fusion: it never mixes modalities into one vector. Each modality is projected on its own into a
shared embedding space (`embed`), so one modality can be embedded alone and any pair can be compared;
`loss` is the symmetric InfoNCE over the pairs of modalities present in a batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .losses import clip_loss

DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


class ContrastiveHead(nn.Module):
    """Per-modality projections into one `embed_dim` space plus a learnable temperature.

    `embed(m, pooled)` gives L2-normalised `[B, embed_dim]` embeddings of modality `m` alone. `loss(embeddings,
    present)` averages the symmetric InfoNCE of every aligned pair (default: all pairs of the modalities),
    over the global batch across processes in training mode; rows where either side is absent are left out.
    `logit_scale` is in log space and clamped to `max_logit_scale` (log 100), as in CLIP.
    """

    def __init__(
        self,
        input_dims: dict[str, int],
        embed_dim: int,
        projection: str = "linear",
        hidden_dim: Optional[int] = None,
        dropout: float = 0.0,
        init_logit_scale: float = DEFAULT_LOGIT_SCALE,
        max_logit_scale: float = MAX_LOGIT_SCALE,
        gather: bool = True,
        pairs: Optional[Sequence[Sequence[str]]] = None,
    ) -> None:
        super().__init__()
        if len(input_dims) < 2:
            raise ValueError(f"a contrastive head needs at least two modalities, got {sorted(input_dims)}")
        if projection not in ("linear", "mlp"):
            raise ValueError(f"contrastive head: projection must be 'linear' or 'mlp', got {projection!r}")
        if int(embed_dim) <= 0:
            raise ValueError(f"contrastive head: embed_dim must be positive, got {embed_dim}")
        self.input_dims = {str(m): int(d) for m, d in sorted(input_dims.items())}
        self.modalities = list(self.input_dims)
        self.embed_dim = int(embed_dim)
        hidden = int(hidden_dim or max(self.input_dims.values())) if projection == "mlp" else None
        self.pairs = self._check_pairs(pairs)
        self.max_logit_scale = float(max_logit_scale)
        self.gather = bool(gather)
        self.config_kwargs: dict[str, Any] = {
            "projection": projection,
            "hidden_dim": hidden,
            "dropout": float(dropout),
            "init_logit_scale": float(init_logit_scale),
            "max_logit_scale": float(max_logit_scale),
            "gather": bool(gather),
            "pairs": [list(p) for p in self.pairs],
        }
        self.projections = nn.ModuleDict()
        for m, d in self.input_dims.items():
            if projection == "linear":
                self.projections[m] = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, self.embed_dim, bias=False))
            else:
                self.projections[m] = nn.Sequential(
                    nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, self.embed_dim)
                )
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def _check_pairs(self, pairs: Optional[Sequence[Sequence[str]]]) -> list[tuple[str, str]]:
        if pairs is None:
            return list(itertools.combinations(self.modalities, 2))
        out = []
        for pair in pairs:
            a, b = (str(x) for x in pair)
            if a == b or a not in self.input_dims or b not in self.input_dims:
                raise ValueError(f"contrastive head: pair {list(pair)} must name two different modalities of {self.modalities}")
            out.append((a, b))
        if not out:
            raise ValueError("contrastive head: pairs is empty")
        return out

    def clamped_logit_scale(self) -> torch.Tensor:
        """`logit_scale` clamped to `max_logit_scale` (log space)."""
        return self.logit_scale.clamp(max=self.max_logit_scale)

    def embed(self, modality: str, pooled: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Project one modality's pooled features `[B, D_m]` into the shared space (L2-normalised by default)."""
        if modality not in self.projections:
            raise KeyError(f"contrastive head has no {modality!r} projection; modalities are {self.modalities}")
        if pooled.dim() != 2 or pooled.shape[-1] != self.input_dims[modality]:
            raise ValueError(
                f"contrastive head: {modality} features have shape {tuple(pooled.shape)}, "
                f"expected [B, {self.input_dims[modality]}]"
            )
        out = self.projections[modality](pooled)
        return F.normalize(out, dim=-1) if normalize else out

    def loss(self, embeddings: dict[str, torch.Tensor], present: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Mean symmetric InfoNCE over the aligned pairs found in `embeddings` (normalised, `[B, embed_dim]`).

        In training mode (and with `gather`) each pair's loss spans the global batch across processes; in eval
        mode it uses the local batch only, so an evaluation on one rank cannot hang in a collective.
        """
        losses = []
        for a, b in self.pairs:
            if a not in embeddings or b not in embeddings:
                continue
            valid = None
            if present is not None and (a in present or b in present):
                ones = torch.ones(embeddings[a].shape[0], dtype=torch.bool, device=embeddings[a].device)
                valid = present.get(a, ones).to(ones.device) & present.get(b, ones).to(ones.device)
            losses.append(
                clip_loss(embeddings[a], embeddings[b], self.clamped_logit_scale(),
                          gather=self.gather and self.training, valid=valid)
            )
        if not losses:
            raise ValueError(f"contrastive loss needs both sides of a pair {self.pairs}; got {sorted(embeddings)}")
        return torch.stack(losses).mean() if len(losses) > 1 else losses[0]

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable."""
        return {"input_dims": dict(self.input_dims), "embed_dim": self.embed_dim, **self.config_kwargs}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ContrastiveHead:
        """Rebuild (fresh weights) from `get_config()`."""
        kwargs = dict(config)
        return cls(kwargs.pop("input_dims"), kwargs.pop("embed_dim"), **kwargs)

    def no_weight_decay(self) -> set[str]:
        """The temperature is never decayed."""
        return {"logit_scale"}

    def extra_repr(self) -> str:
        return f"modalities={self.modalities}, embed_dim={self.embed_dim}, pairs={self.pairs}"
