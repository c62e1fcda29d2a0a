"""Optimizer parameter groups of an encoder model, on timm's group functions.

* Weight decay: one rule for every group (timm's): none for 1-d parameters (biases, norm weights), for
  ``bias`` / ``logit_scale`` and for names a module lists in its ``no_weight_decay()`` (learned tokens, timm
  position embeddings); everything else gets ``weight_decay``.
* Parts: encoder parameters train at ``encoder_lr``, everything else (fusion, heads, adapters outside the
  encoders) at ``head_lr``. Frozen parameters are left out.
* Layer-wise LR decay (BEiT / open_clip PR #268 style, timm's ``param_groups_layer_decay``): an encoder
  parameter in layer group ``i`` of ``top`` (`multimodal.models.unlock.encoder_layer_ids`: timm's
  ``group_matcher(coarse=False)`` or the Hugging Face layer index) gets ``encoder_lr * layer_decay ** (top - i)``,
  so the last block trains at ``encoder_lr`` and the stem / embeddings at the smallest rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Optional

from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from multimodal.models.unlock import encoder_layer_ids

NO_DECAY_LEAVES = ("bias", "logit_scale")


class _Part:
    """Some of a model's parameters (full names) as timm's group functions read a model; with `layer_of`, also a
    ``group_matcher`` giving each name its layer group."""

    def __init__(self, params: list[tuple[str, nn.Parameter]], layer_of: Optional[Callable[[str], int]] = None):
        self._params = params
        if layer_of is not None:
            self.group_matcher = lambda coarse=False: layer_of

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(self._params)


def no_weight_decay_names(model: nn.Module) -> list[str]:
    """Name patterns (fnmatch) trained without weight decay, besides every parameter of one dimension or less."""
    names = [pattern for leaf in NO_DECAY_LEAVES for pattern in (leaf, f"*.{leaf}")]
    for prefix, module in model.named_modules():
        hook = getattr(module, "no_weight_decay", None)
        if callable(hook):
            names += [f"{prefix}.{n}" if prefix else n for n in hook()]
    return names


def _named(groups: list[dict[str, Any]], part: str, lr: float, layered: bool) -> list[dict[str, Any]]:
    for g in groups:
        g["lr"] = lr * g.setdefault("lr_scale", 1.0)
        kind = "decay" if g["weight_decay"] else "no_decay"
        g["name"] = f"{part}.scale{g['lr_scale']:.4g}.{kind}" if layered else f"{part}.{kind}"
    # decay first, as the groups were ordered before timm built them (optimizer state follows group order)
    return sorted(groups, key=lambda g: not g["weight_decay"])


def _encoder_groups(model: nn.Module, names: dict[int, str], lr: float, weight_decay: float, layer_decay: float,
                    no_decay: list[str]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for m, encoder in model.encoders.items():
        params = [(names[id(p)], p) for p in encoder.parameters()]
        if not any(p.requires_grad for _, p in params):
            continue
        ids, top = encoder_layer_ids(encoder, coarse=False)
        if top == 0:  # one layer group: nothing to decay
            groups += _named(param_groups_weight_decay(_Part(params), weight_decay, no_weight_decay_list=no_decay),
                             f"encoders.{m}", lr, layered=True)
            continue
        layer = {names[id(p)]: ids.get(local, top) for local, p in encoder.named_parameters()}
        part = _Part(params, lambda name, layer=layer, top=top: layer.get(name, top))
        found = param_groups_layer_decay(part, weight_decay, no_weight_decay_list=no_decay, layer_decay=layer_decay)
        groups += _named(found, f"encoders.{m}", lr, layered=True)
    return groups


def param_groups(model: nn.Module, encoder_lr: float, head_lr: float, weight_decay: float,
                 layer_decay: Optional[float] = None) -> list[dict[str, Any]]:
    """AdamW groups: encoders (layer-decayed per encoder when `layer_decay` is set) and everything else, each
    split into decay / no-decay; frozen parameters left out. Each group has ``lr``, ``weight_decay``, ``name``
    and ``lr_scale``. The encoders are ``model.encoders`` wherever the model keeps them (a wrapper's too)."""
    no_decay = no_weight_decay_names(model)
    names = {id(p): n for n, p in model.named_parameters()}
    encoders = getattr(model, "encoders", None)
    in_encoders = {id(p) for p in encoders.parameters()} if encoders is not None else set()
    groups: list[dict[str, Any]] = []
    if encoders is not None and layer_decay:
        groups += _encoder_groups(model, names, encoder_lr, weight_decay, layer_decay, no_decay)
    elif encoders is not None:
        part = _Part([(n, p) for n, p in model.named_parameters() if id(p) in in_encoders])
        groups += _named(param_groups_weight_decay(part, weight_decay, no_weight_decay_list=no_decay), "encoders",
                         encoder_lr, layered=False)
    rest = _Part([(n, p) for n, p in model.named_parameters() if id(p) not in in_encoders])
    head = param_groups_weight_decay(rest, weight_decay, no_weight_decay_list=no_decay)
    return groups + _named(head, "head", head_lr, layered=bool(layer_decay))
