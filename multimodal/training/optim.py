"""The Trainer's optimizer: AdamW over the model's parameter groups (`multimodal.models.param_groups`: encoder /
head learning rates, one weight-decay rule, layer-wise LR decay when ``train.layer_decay`` is set)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from multimodal.deprecation import moved
from multimodal.models import param_groups as param_groups_module
from multimodal.models.param_groups import param_groups


def train_param_groups(model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """The groups for a `TrainConfig`: its learning rates, weight decay and layer decay."""
    return param_groups(model, cfg.encoder_lr, cfg.head_lr, cfg.weight_decay, getattr(cfg, "layer_decay", None))


def make_optimizer(model: nn.Module, cfg: Any, unfreeze_later: bool = False) -> torch.optim.Optimizer:
    """AdamW over the model's parameter groups. With a later unfreeze the encoder groups are included from the
    start (AdamW skips parameters without gradients), so the optimizer state stays stable."""
    if unfreeze_later:
        frozen = [name for name, enc in model.encoders.items() if enc.frozen]
        model.unfreeze_encoders()
        groups = train_param_groups(model, cfg)
        if frozen:
            model.freeze_encoders(frozen)
    else:
        groups = train_param_groups(model, cfg)
    if not groups:
        raise ValueError("no trainable parameters: every parameter is frozen")
    return torch.optim.AdamW(groups, lr=cfg.head_lr)



__getattr__ = moved(__name__, param_groups_module, {
    "layer_decay_groups": (param_groups, "multimodal.models.param_groups.param_groups (same arguments)"),
})
