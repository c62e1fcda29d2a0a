"""Exponential moving average of the weights, through timm's ``ModelEmaV3``, checkpointed as safetensors.

The EMA is updated after every optimizer step with the step number, so the decay warm-up
(``1 - (1 + step)^(-2/3)``, capped at ``train.ema_decay``) depends only on the step and a resumed run continues
bit-identically. Parameters and buffers (BatchNorm statistics) are averaged; integer buffers are copied.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.utils import ModelEmaV3
from torch import nn

from multimodal.models.base import untie_state_dict

EMA_FILE = "ema.safetensors"


class WeightEma:
    """An EMA copy of a model (``.module``), updated in place by `update`; `decay` in (0, 1) (``train.ema_decay``,
    checked with the train config)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=warmup, foreach=True)
        for p in self.ema.module.parameters():
            p.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (eval mode)."""
        return self.ema.module

    def update(self, model: nn.Module, step: int) -> None:
        """Blend the model's current weights in; `step` is the optimizer step just taken (1-based)."""
        self.ema.update(model, step=step)

    def save(self, directory: str) -> None:
        """Write the EMA weights as ``ema.safetensors`` into `directory`."""
        os.makedirs(directory, exist_ok=True)
        tensors, _ = untie_state_dict(self.module.state_dict())
        tmp = os.path.join(directory, f".{EMA_FILE}.tmp")
        save_file(tensors, tmp)
        os.replace(tmp, os.path.join(directory, EMA_FILE))

    def load(self, directory: str) -> None:
        """Restore the EMA weights from a checkpoint directory (strict)."""
        path = os.path.join(directory, EMA_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: the checkpoint was written without train.ema_decay")
        state = load_file(path)
        own = self.module.state_dict()
        for k, v in own.items():  # tied tensors were stored once
            if k not in state:
                for other, t in own.items():
                    if other in state and t.data_ptr() == v.data_ptr():
                        state[k] = state[other]
                        break
        self.module.load_state_dict(state, strict=True)


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy `src`'s state into `dst` (same architecture)."""
    with torch.no_grad():
        dst.load_state_dict(src.state_dict(), strict=True)


def ema_summary(ema: Any) -> dict[str, Any]:
    """The EMA settings for metrics.json."""
    return {"decay": ema.ema.decay, "warmup": ema.ema.use_warmup}
