"""The encoder contract every modality implements."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from torch import nn


class EncoderOutput(NamedTuple):
    """What every encoder returns: pooled features, and optionally a token sequence with its mask."""

    pooled: torch.Tensor  # [B, D]
    tokens: Optional[torch.Tensor] = None  # [B, T, D]
    mask: Optional[torch.Tensor] = None  # [B, T] bool, True where the token is real


Preprocessor = Callable[[list], dict]
"""A picklable callable turning a list of raw samples (None for absent ones) into a dict of tensors."""


class EncoderError(RuntimeError):
    """Raised when an encoder cannot be built or loaded; the message says what to do instead."""


@dataclass
class EncoderInfo:
    """One row of `list_encoders()`."""

    kind: str
    description: str
    example: str


class Encoder(nn.Module):
    """Base class: a backbone plus the preprocessing that feeds it.

    Subclasses set `modality`, `output_dim` and `spec` (and `token_dim` when tokens are not
    `output_dim` wide), and implement `forward`, `get_preprocessor`, `get_config` and `save_assets`.
    To be created from a spec they also provide the classmethods `create(name, pretrained=True, **kwargs)`
    and `from_config(config, assets_dir)`, and are registered with `encoders.register_encoder(kind, cls)`.
    """

    modality: str = ""
    output_dim: int = 0
    spec: str = ""
    backbone: nn.Module
    _token_dim: int = 0

    @property
    def token_dim(self) -> int:
        """Width of `EncoderOutput.tokens` (`output_dim` unless a subclass sets another)."""
        return self._token_dim or self.output_dim

    @token_dim.setter
    def token_dim(self, value: int) -> None:
        self._token_dim = int(value)

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:  # pragma: no cover - abstract
        """Encode a batch of preprocessed inputs."""
        raise NotImplementedError

    def get_preprocessor(self, train: bool = False) -> Preprocessor:  # pragma: no cover - abstract
        """Return a picklable callable for DataLoader workers: list of raw samples -> dict of tensors."""
        raise NotImplementedError

    def preprocess(self, raw_batch: list, train: bool = False) -> dict[str, torch.Tensor]:
        """Turn a list of raw samples into model inputs; `None` entries become neutral placeholders."""
        return self.get_preprocessor(train)(raw_batch)

    def get_config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """JSON-serialisable description that `encoders.encoder_from_config` rebuilds offline."""
        raise NotImplementedError

    def save_assets(self, directory: str) -> None:
        """Write the non-weight files (HF config, tokenizer, feature extractor) needed to rebuild offline."""

    def preprocess_config(self) -> dict[str, Any]:
        """Everything that changes what `preprocess` produces; used to key feature caches."""
        return self.get_config()

    def freeze(self) -> Encoder:
        """Stop gradients to every parameter and put the backbone in eval mode for norms/dropout."""
        if not getattr(self, "_frozen", False):
            # remember parameters the backbone itself keeps fixed (e.g. Whisper's sinusoidal positions)
            self._fixed_params = {n for n, p in self.named_parameters() if not p.requires_grad}
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        self.train(self.training)
        return self

    def unfreeze(self) -> Encoder:
        """Let every parameter train again (except those the backbone keeps fixed by design)."""
        fixed = getattr(self, "_fixed_params", set())
        for n, p in self.named_parameters():
            p.requires_grad_(n not in fixed)
        self._frozen = False
        self.train(self.training)
        return self

    @property
    def frozen(self) -> bool:
        """True after `freeze()` until `unfreeze()`."""
        return getattr(self, "_frozen", False)

    def train(self, mode: bool = True) -> Encoder:
        """Like `nn.Module.train`, but a frozen encoder keeps its backbone in eval mode."""
        super().train(mode)
        if getattr(self, "_frozen", False):
            for module in self.children():
                module.eval()
        keep_eval = getattr(self, "_keep_eval", None)  # e.g. frozen BatchNorms of a partly trained encoder
        if keep_eval:
            for name, module in self.named_modules():
                if name in keep_eval:
                    module.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory; raises if the backbone has no checkpointing support."""
        raise EncoderError(f"{type(self).__name__} ({self.spec}) has no gradient checkpointing")

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, modality={self.modality!r}, output_dim={self.output_dim}"


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` [B, T, D] over the positions where `mask` [B, T] is true; rows with none give zeros."""
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"masked_mean: expected hidden [B, T, D] and mask [B, T], got {tuple(hidden.shape)} "
                         f"and {tuple(mask.shape)}")
    keep = mask.to(torch.bool).unsqueeze(-1)
    # select rather than multiply, so inf/NaN at padded positions cannot leak in (inf * 0 is NaN)
    total = torch.where(keep, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(1)
    count = keep.sum(1).clamp_min(1).to(hidden.dtype)
    return total / count


def jsonable(value: Any) -> Any:
    """A JSON-ready copy of `value`: containers to dicts (str keys) and lists, numpy/torch to Python values.

    Tuples and sets become lists (sets sorted, so the result is stable); numpy scalars and arrays and torch
    tensors become numbers and nested lists; paths become strings; NaN and infinite floats become None
    (strict JSON has neither); anything else becomes its repr().
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):  # also numpy float64, a float subclass
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:  # mixed or unorderable types
            return sorted(items, key=lambda v: (type(v).__name__, repr(v)))
    if isinstance(value, (np.ndarray, np.generic)):
        return jsonable(value.tolist())
    if isinstance(value, torch.Tensor):
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, PurePath):
        return str(value)
    return repr(value)
