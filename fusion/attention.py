"""Attention fusion: a transformer encoder over the concatenated token sequences of all modalities."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from encoders.base import EncoderOutput

from .base import Features, Fusion, Presence
from .registry import register_fusion


@register_fusion(
    "attention", "transformer over all modalities' tokens with modality embeddings and a [CLS] token"
)
class AttentionFusion(Fusion):
    """Joint self-attention over every modality's tokens; the [CLS] output is the fused vector.

    Each modality's tokens (or its pooled vector as a one-token sequence when the encoder gives no tokens)
    are projected to `hidden_dim` and tagged with a learned modality-type embedding. The key-padding mask
    combines each encoder's token mask with per-sample presence, so an absent modality's tokens are never
    attended to (they are also replaced by zeros before projection).
    """

    requires_tokens = True

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        token_dims: Optional[dict[str, int]] = None,
    ) -> None:
        """`token_dims` gives a modality's token width where it differs from its pooled width (`input_dims`),
        e.g. timm MobileNetV3 (pooled 1024, tokens 288): pass ``{m: encoder.token_dim}``."""
        super().__init__(input_dims, output_dim)
        if hidden_dim % num_heads:
            raise ValueError(
                f"attention fusion: hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}"
            )
        self.hidden_dim = int(hidden_dim)
        self.config_kwargs = {
            "hidden_dim": int(hidden_dim),
            "num_layers": int(num_layers),
            "num_heads": int(num_heads),
            "ffn_mult": int(ffn_mult),
            "dropout": float(dropout),
        }
        unknown = sorted(set(token_dims or {}) - set(self.input_dims))
        if unknown:
            raise ValueError(f"attention fusion: token_dims names unknown modalities {unknown}")
        self.token_dims = {**self.input_dims, **{m: int(d) for m, d in (token_dims or {}).items()}}
        if token_dims:
            self.config_kwargs["token_dims"] = {m: int(d) for m, d in sorted(token_dims.items())}
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden_dim) for m, d in self.token_dims.items()})
        # A pooled vector used as a one-token sequence (encoder gave no tokens) needs its own projection
        # where its width differs from the token width.
        self.pooled_proj = nn.ModuleDict(
            {m: nn.Linear(d, hidden_dim) for m, d in self.input_dims.items() if d != self.token_dims[m]}
        )
        self.modality_embed = nn.Parameter(torch.randn(len(self.modalities), hidden_dim) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            hidden_dim,
            num_heads,
            dim_feedforward=ffn_mult * hidden_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_dim)
        self.out = nn.Linear(hidden_dim, output_dim)

    def _sequence(
        self, m: str, out: EncoderOutput, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [B, T, D_m] and keep-mask [B, T] for one modality, absent samples fully masked."""
        if out.tokens is None:
            tokens = out.pooled.unsqueeze(1)
            keep = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        else:
            tokens = out.tokens
            if (
                tokens.dim() != 3
                or tokens.shape[-1] != self.token_dims[m]
                or tokens.shape[0] != out.pooled.shape[0]
            ):
                hint = (
                    f"; if the encoder's tokens are narrower or wider than its pooled output, pass "
                    f"token_dims={{{m!r}: {tokens.shape[-1]}}} (encoder.token_dim)"
                    if tokens.dim() == 3 and tokens.shape[-1] != self.token_dims[m] else ""
                )
                raise ValueError(
                    f"attention fusion: modality {m!r} tokens have shape {tuple(tokens.shape)}, "
                    f"expected [{out.pooled.shape[0]}, T, {self.token_dims[m]}]{hint}"
                )
            if out.mask is None:
                keep = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            else:
                if out.mask.shape != tokens.shape[:2]:
                    raise ValueError(
                        f"attention fusion: modality {m!r} mask shape {tuple(out.mask.shape)} "
                        f"does not match tokens {tuple(tokens.shape[:2])}"
                    )
                keep = out.mask.to(torch.bool)
        keep = keep & present.unsqueeze(1)
        tokens = torch.where(
            keep.unsqueeze(-1), tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device)
        )
        return tokens, keep

    def forward(self, features: Features, present: Presence = None) -> torch.Tensor:
        """Run the joint transformer and return the projected [CLS] output, `[B, output_dim]`."""
        features, present = self.prepare(features, present)
        batch = features[self.modalities[0]].pooled.shape[0]
        cls = self.cls_token.expand(batch, -1, -1)
        seqs = [cls]
        keeps = [torch.ones(batch, 1, dtype=torch.bool, device=cls.device)]
        for i, m in enumerate(self.modalities):
            tokens, keep = self._sequence(m, features[m], present[m])
            proj = self.pooled_proj[m] if features[m].tokens is None and m in self.pooled_proj else self.proj[m]
            seqs.append(proj(tokens.to(cls.dtype)) + self.modality_embed[i])
            keeps.append(keep)
        x = torch.cat(seqs, dim=1)
        keep = torch.cat(keeps, dim=1)
        y = self.encoder(x, src_key_padding_mask=~keep)
        return self.out(self.norm(y[:, 0]))

    def no_weight_decay(self) -> set[str]:
        """Learned tokens and type embeddings are not decayed."""
        return {"cls_token", "modality_embed"}
