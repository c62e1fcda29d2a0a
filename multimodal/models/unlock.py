"""Layer structure of encoders: which block each parameter belongs to, for partial unlocking and layer decay.

timm backbones are grouped by their own ``group_matcher`` (through ``timm.models.group_parameters``):
``coarse=True`` gives the units open_clip's ``unlocked_groups`` counts (stem, one group per stage or block,
the final norm / head conv merged into the last), ``coarse=False`` the finer ones layer decay uses (one per
block). Hugging Face models are grouped by their layer index (``encoder.layer.7.`` -> 8): embeddings and
anything before the first layer are group 0, anything after the last layer joins the last. LoRA-wrapped
backbones (peft) are grouped by their base model's names.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

_HF_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_PEFT_PREFIX = "base_model.model."


def _backbone_and_prefix(encoder: nn.Module) -> tuple[nn.Module, str]:
    backbone = encoder.backbone
    if hasattr(backbone, "get_base_model"):  # a peft PeftModel
        return backbone.get_base_model(), "backbone." + _PEFT_PREFIX
    return backbone, "backbone."


def encoder_layer_ids(encoder: nn.Module, coarse: bool = True) -> tuple[dict[str, int], int]:
    """(parameter name relative to the encoder -> group id, top id); group 0 is the stem / embeddings."""
    backbone, prefix = _backbone_and_prefix(encoder)
    names = [n for n, _ in backbone.named_parameters()]
    if hasattr(backbone, "group_matcher"):
        from timm.models import group_parameters

        local = group_parameters(backbone, backbone.group_matcher(coarse=coarse), reverse=True)
    else:
        local, seen, last = {}, False, 0
        for n in names:
            match = _HF_LAYER.search(n)
            if match:
                seen, last = True, int(match.group(1)) + 1
                local[n] = last
            else:
                local[n] = last if seen else 0  # after the last layer: joins it; before the first: group 0
    top = max(local.values()) if local else 0
    ids = {prefix + n: int(i) for n, i in local.items()}
    for n, _ in encoder.named_parameters():  # parameters outside the backbone (front ends): with the stem
        ids.setdefault(n, 0)
    return ids, top


def batchnorm_names(module: nn.Module, frozen_only: bool = True) -> set[str]:
    """Names of the BatchNorm-style modules (running statistics) whose parameters are all frozen."""
    names = set()
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not frozen_only or not any(p.requires_grad for p in m.parameters()):
                names.add(name)
    return names


def keep_frozen_norms_in_eval(encoder: Any) -> None:
    """Frozen BatchNorms stay in eval mode under ``.train()``: their running statistics do not drift. After
    `freeze_norm_stats`, every BatchNorm of the encoder does (its affine weights may still train)."""
    encoder._keep_eval = batchnorm_names(encoder, frozen_only=not getattr(encoder, "norm_stats_frozen", False))
    encoder.train(encoder.training)


def freeze_norm_stats(encoder: Any, enabled: bool = True) -> Any:
    """Keep every BatchNorm of `encoder` in eval mode while it trains: batches are normalised with the pretrained
    running statistics, which stay unchanged; the norms' affine weights still train when unfrozen. With
    ``enabled=False`` only the BatchNorms whose parameters are all frozen keep their statistics."""
    encoder.norm_stats_frozen = bool(enabled)
    keep_frozen_norms_in_eval(encoder)
    return encoder


def lock_encoder(encoder: Any, unlocked_groups: int = 0) -> Any:
    """Freeze `encoder` except its last `unlocked_groups` coarse layer groups (open_clip's ``unlocked_groups``):
    0 freezes it all, more than it has unlocks all of it. Frozen BatchNorms keep their running statistics."""
    n = int(unlocked_groups)
    if n < 0:
        raise ValueError(f"unlocked_groups must be >= 0, got {unlocked_groups}")
    if n == 0:
        return encoder.freeze()
    encoder.unfreeze()
    ids, top = encoder_layer_ids(encoder, coarse=True)
    for name, p in encoder.named_parameters():
        if ids.get(name, top) <= top - n:
            p.requires_grad_(False)
    keep_frozen_norms_in_eval(encoder)
    return encoder


def unlock_last_blocks(model: Any, counts: dict[str, int]) -> Any:
    """Train only the last ``counts[modality]`` blocks (coarse groups) of each named encoder; the rest is frozen
    (with its BatchNorm statistics). 0 freezes the whole encoder; more than it has unlocks all of it."""
    for modality, n in counts.items():
        if modality not in model.encoders:
            raise ValueError(f"model.unlock_last_blocks names {modality!r}, which is not in model.encoders "
                             f"({sorted(model.encoders)})")
        if int(n) < 0:
            raise ValueError(f"model.unlock_last_blocks.{modality} must be >= 0, got {n}")
        lock_encoder(model.encoders[modality], int(n))
    return model
