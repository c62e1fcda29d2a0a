"""The fusion contract: a dict of encoder outputs plus presence masks in, one feature vector out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from torch import nn

from encoders.base import EncoderOutput

Presence = Optional[dict[str, torch.Tensor]]
"""Per-modality bool tensors [B]: True where the sample has that modality. None means all present."""

Features = Mapping[str, Union[EncoderOutput, torch.Tensor]]
"""Per-modality encoder outputs, or plain pooled tensors [B, D] (research code without encoders)."""


def as_encoder_output(value: Union[EncoderOutput, torch.Tensor], modality: str = "?") -> EncoderOutput:
    """An `EncoderOutput` as is; a plain pooled tensor [B, D] wrapped as one (no tokens)."""
    if isinstance(value, EncoderOutput):
        return value
    if isinstance(value, torch.Tensor):
        return EncoderOutput(pooled=value)
    raise TypeError(f"features[{modality!r}] must be an EncoderOutput or a [B, D] tensor, got {type(value).__name__}")


class Fusion(nn.Module):
    """Base class for fusion heads.

    `forward(features, present)` returns `[B, output_dim]`. A fusion whose `requires_tokens` is True
    reads `EncoderOutput.tokens`/`mask`; the others read `pooled`. A modality absent for a sample
    (``present[m][i] is False``) must not influence that sample's output.

    Subclasses record their extra constructor arguments in `self.config_kwargs` so that
    `get_config()` + `fusion.create_fusion` rebuild the same architecture.
    """

    requires_tokens: bool = False
    name: str = ""

    def __init__(self, input_dims: dict[str, int], output_dim: int) -> None:
        super().__init__()
        if not input_dims:
            raise ValueError("input_dims must name at least one modality")
        self.input_dims = {str(m): int(d) for m, d in sorted(input_dims.items())}
        self.modalities = list(self.input_dims)
        self.output_dim = int(output_dim)
        if self.output_dim <= 0:
            raise ValueError(f"output_dim must be positive, got {output_dim}")
        self.config_kwargs: dict[str, Any] = {}

    def forward(self, features: Features, present: Presence = None) -> torch.Tensor:  # pragma: no cover - abstract
        """Fuse the modalities into `[B, output_dim]`."""
        raise NotImplementedError

    def prepare(self, features: Features, present: Presence) -> tuple[dict[str, EncoderOutput], dict[str, torch.Tensor]]:
        """Features as `EncoderOutput`s (plain tensors wrapped) and complete, checked presence masks."""
        feats = {m: as_encoder_output(v, m) for m, v in features.items()}
        return feats, self.presence(feats, present)

    def presence(self, features: Features, present: Presence) -> dict[str, torch.Tensor]:
        """Fill in all-True masks for modalities the caller did not mask; check keys, widths and batch sizes.

        A `present` key that is not one of the fusion's modalities raises: a misspelt mask would otherwise be
        ignored and the modality taken as present for every sample."""
        features = {m: as_encoder_output(v, m) for m, v in features.items()}
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise KeyError(f"{type(self).__name__} expects modalities {self.modalities}; missing {missing}")
        unknown = sorted(str(m) for m in (present or {}) if m not in self.input_dims)
        if unknown:
            raise KeyError(f"{type(self).__name__}: present names unknown modalities {unknown}; the known "
                           f"modalities are {self.modalities}")
        out = {}
        batch = None
        for m in self.modalities:
            pooled = features[m].pooled
            if pooled.dim() != 2 or pooled.shape[-1] != self.input_dims[m]:
                raise ValueError(
                    f"{type(self).__name__}: modality {m!r} pooled features have shape {tuple(pooled.shape)}, "
                    f"expected [B, {self.input_dims[m]}]"
                )
            if batch is None:
                batch = pooled.shape[0]
            elif pooled.shape[0] != batch:
                raise ValueError(
                    f"{type(self).__name__}: modality {m!r} has batch size {pooled.shape[0]}, others {batch}"
                )
            mask = None if present is None else present.get(m)
            if mask is None:
                mask = torch.ones(pooled.shape[0], dtype=torch.bool, device=pooled.device)
            elif mask.shape != (pooled.shape[0],):
                raise ValueError(
                    f"{type(self).__name__}: present[{m!r}] has shape {tuple(mask.shape)}, expected ({batch},)"
                )
            out[m] = mask.to(device=pooled.device, dtype=torch.bool)
        return out

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable arguments that `fusion.fusion_from_config` turns back into this architecture."""
        return {
            "name": self.name,
            "input_dims": dict(self.input_dims),
            "output_dim": self.output_dim,
            "kwargs": dict(self.config_kwargs),
        }

    def no_weight_decay(self) -> set[str]:
        """Names of parameters (relative to this module) that should not get weight decay."""
        return set()

    def extra_repr(self) -> str:
        return f"input_dims={self.input_dims}, output_dim={self.output_dim}"


def zero_absent(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Replace rows (or tokens) where `keep` is False by exact zeros; values there cannot leak, even inf/NaN."""
    shape = tuple(keep.shape) + (1,) * (x.dim() - keep.dim())
    return torch.where(keep.reshape(shape), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_softmax(logits: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over `dim` restricted to `keep`; masked entries get exactly 0, all-masked slices give all 0."""
    keep = keep.expand_as(logits)
    filled = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
    weights = torch.softmax(filled, dim=dim)
    return torch.where(keep, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))


def mlp(in_dim: int, hidden_dim: Optional[int], out_dim: int, dropout: float = 0.0) -> nn.Module:
    """A linear layer, or Linear-GELU-Dropout-Linear when `hidden_dim` is given."""
    if not hidden_dim:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
    )


def stack_presence(present: dict[str, torch.Tensor], modalities: list[str]) -> torch.Tensor:
    """Stack per-modality presence masks into a bool tensor [B, M] in `modalities` order."""
    return torch.stack([present[m] for m in modalities], dim=1)
