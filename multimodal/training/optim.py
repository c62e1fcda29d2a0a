"""Optimizer parameter groups with layer-wise LR decay (BEiT / open_clip PR #268 style).

An encoder parameter in layer group ``i`` of ``top`` (`multimodal.models.unlock.encoder_layer_ids`, i.e. timm's
``group_matcher(coarse=False)`` via ``timm.models.group_parameters``, or the Hugging Face layer index) gets
``encoder_lr * layer_decay ** (top - i)``: the last block trains at ``encoder_lr``, the stem / embeddings at
the smallest rate. Fusion and heads keep ``head_lr``. Weight decay follows `EncoderModel.parameter_groups`
(none for biases, 1-d parameters, ``logit_scale`` and names a module lists in ``no_weight_decay()``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from multimodal.models.unlock import encoder_layer_ids


def layer_decay_groups(model: Any, encoder_lr: float, head_lr: float, weight_decay: float,
                       layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: one per (encoder layer scale, decay / no-decay), plus the head's two."""
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"train.layer_decay must be in (0, 1], got {layer_decay}")
    no_decay_names = model._no_decay_names()
    scales: dict[str, float] = {}
    for m, encoder in model.encoders.items():
        ids, top = encoder_layer_ids(encoder, coarse=False)
        for name, _ in encoder.named_parameters():
            scales[f"encoders.{m}.{name}"] = layer_decay ** (top - ids.get(name, top))
    groups: dict[tuple, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        decay = not (p.ndim <= 1 or leaf in ("bias", "logit_scale") or name in no_decay_names)
        scale: Optional[float] = scales.get(name) if name.startswith("encoders.") else None
        key = ("encoders", round(scale, 12), decay) if scale is not None else ("head", 1.0, decay)
        if key not in groups:
            lr = encoder_lr * scale if scale is not None else head_lr
            part = "encoders" if scale is not None else "head"
            groups[key] = {"params": [], "lr": lr, "weight_decay": weight_decay if decay else 0.0,
                           "name": f"{part}.scale{key[1]:.4g}.{'decay' if decay else 'no_decay'}", "lr_scale": key[1]}
        groups[key]["params"].append(p)
    return list(groups.values())


def param_groups(model: Any, cfg: Any) -> list[dict[str, Any]]:
    """The Trainer's groups for a `TrainConfig`: layer-decayed when ``cfg.layer_decay`` is set."""
    if getattr(cfg, "layer_decay", None):
        return layer_decay_groups(model, cfg.encoder_lr, cfg.head_lr, cfg.weight_decay, cfg.layer_decay)
    return model.parameter_groups(cfg.encoder_lr, cfg.head_lr, cfg.weight_decay)


def make_optimizer(model: nn.Module, cfg: Any, unfreeze_later: bool = False) -> torch.optim.Optimizer:
    """AdamW over the model's parameter groups (layer-wise LR decay when ``train.layer_decay`` is set). With a
    later unfreeze the encoder groups are included from the start (AdamW skips parameters without gradients),
    so the optimizer state stays stable."""
    if unfreeze_later:
        frozen = [name for name, enc in model.encoders.items() if enc.frozen]
        model.unfreeze_encoders()
        groups = param_groups(model, cfg)
        if frozen:
            model.freeze_encoders(frozen)
    else:
        groups = param_groups(model, cfg)
    groups = [g for g in groups if len(list(g["params"]))]
    if not groups:
        raise ValueError("no trainable parameters: every parameter is frozen")
    return torch.optim.AdamW(groups, lr=cfg.head_lr)
