"""The encoder contract every modality implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

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

    Subclasses set `modality`, `output_dim` and `spec`, and implement `forward`,
    `get_preprocessor`, `get_config` and `save_assets`.
    """

    modality: str = ""
    output_dim: int = 0
    spec: str = ""
    backbone: nn.Module

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
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory; raises if the backbone has no checkpointing support."""
        raise EncoderError(f"{type(self).__name__} ({self.spec}) has no gradient checkpointing")

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, modality={self.modality!r}, output_dim={self.output_dim}"
