"""Sharded training (FSDP2 through accelerate): wrap classes per encoder family, full weights in and out.

accelerate shards the model when launched with an FSDP config (``recipes/accelerate/fsdp.yaml``); this module
holds the few things the framework adds on top, all keyed on whether the model is sharded (has
``torch.distributed.fsdp.FSDPModule`` parts), so the same functions serve plain, DDP and FSDP models:

* `fsdp_block_classes(model)`: the block classes to make FSDP units of, found per encoder family (the HF
  backbone's ``_no_split_modules``, e.g. ``BertLayer``; a timm backbone's blocks, e.g. ``Block`` for ViTs,
  ``InvertedResidual`` for EfficientNets, ``Bottleneck`` for ResNets). `configure_fsdp` passes them to
  accelerate's FSDP plugin when its config names none.
* `full_state_dict(model)` / `load_full_state_dict(model, state)`: unsharded CPU tensors out of, and into, a
  sharded or plain model (collectives on every rank when sharded), so the best ``model/`` folder is an
  ordinary ``save_pretrained`` folder that loads without FSDP.
* `consolidate_checkpoint(checkpoint, model_dir, output)`: a sharded training checkpoint
  (``pytorch_model_fsdp_0/``, written by ``accelerator.save_state``) merged into a ``save_pretrained`` folder.

Frozen towers and partially unlocked encoders (any ``requires_grad`` subset) need nothing special: FSDP2
shards per parameter, and parameters without gradients are simply not reduced. LoRA adapters (when they
land) are ordinary trainable parameters inside wrapped blocks; the one thing they need is that the adapters
are injected *before* ``accelerator.prepare`` (so FSDP shards them with their block).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Optional

import torch
from accelerate.utils import DistributedType, merge_fsdp_weights
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

from multimodal.models.base import WEIGHTS_NAME, load_model, load_weights, read_model_config

SHARDED_MODEL_DIR = "pytorch_model_fsdp_0"  # accelerate's folder name for the first model's sharded weights
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def is_sharded(model: nn.Module) -> bool:
    """Whether any part of `model` has been sharded with FSDP2 (``fully_shard``)."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def _timm_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a timm backbone: children of ``blocks``/``stages``/``layerN`` (stages unrolled)."""
    found: list[nn.Module] = []
    for name, child in backbone.named_children():
        if name in ("blocks", "stages", "layers") or (name.startswith("layer") and name[5:].isdigit()):
            for part in child.children() if isinstance(child, _CONTAINERS) else [child]:
                found.extend(part.children() if isinstance(part, _CONTAINERS) else [part])
    return found


def fsdp_block_classes(model: nn.Module) -> list[str]:
    """Class names of the blocks to shard as FSDP units, found in every encoder family of `model` (sorted)."""
    names: set[str] = set()
    for module in model.modules():
        no_split = getattr(module, "_no_split_modules", None)
        if isinstance(no_split, (list, tuple, set)) and no_split and hasattr(module, "config"):
            present = {type(m).__name__ for m in module.modules()}
            names.update(n for n in no_split if n in present)  # transformers families (BERT, ViT, wav2vec2, ...)
        elif hasattr(module, "pretrained_cfg") and hasattr(module, "forward_features"):  # a timm model
            names.update(type(b).__name__ for b in _timm_blocks(module) if not isinstance(b, _CONTAINERS))
    return sorted(names)


def configure_fsdp(accelerator: Any, model: nn.Module) -> Optional[list[str]]:
    """With accelerate's FSDP plugin on a transformer-based wrap policy and no classes named, fill in
    `fsdp_block_classes(model)`; returns the classes used (None when not running under FSDP)."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return None
    plugin = accelerator.state.fsdp_plugin
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if policy is transformer_auto_wrap_policy and not plugin.transformer_cls_names_to_wrap:
        plugin.transformer_cls_names_to_wrap = fsdp_block_classes(model)
    return list(plugin.transformer_cls_names_to_wrap or [])


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict as plain CPU tensors; for a sharded model a collective every rank must call,
    and only rank 0 gets the tensors (the others an empty dict)."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load unsharded tensors into a sharded model (every rank, its own shard) or a plain one (strict)."""
    if not is_sharded(model):
        model.load_state_dict(state, strict=True)
        return
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


def read_saved_weights(directory: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``save_pretrained`` folder, tied aliases restored (as `load_weights` reads them)."""
    config = read_model_config(directory)
    state = load_file(os.path.join(directory, WEIGHTS_NAME))
    for alias, canonical in config.get("tied_weights", {}).items():
        state[alias] = state[canonical]
    return state


def load_saved_weights(model: nn.Module, directory: str) -> None:
    """`multimodal.models.base.load_weights` for a model that may be sharded (then on every rank)."""
    if is_sharded(model):
        load_full_state_dict(model, read_saved_weights(directory))
    else:
        load_weights(model, directory)


def consolidate_checkpoint(checkpoint: str, model_dir: str, output: str) -> str:
    """Merge a sharded checkpoint's weights (``<checkpoint>/pytorch_model_fsdp_0``) into a full
    ``save_pretrained`` folder at `output`, with the architecture and assets of the saved model `model_dir`."""
    sharded = os.path.join(checkpoint, SHARDED_MODEL_DIR)
    if not os.path.isdir(sharded):
        raise FileNotFoundError(f"{checkpoint}: no {SHARDED_MODEL_DIR}/ (not a sharded FSDP checkpoint)")
    model = load_model(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        merge_fsdp_weights(sharded, tmp, safe_serialization=True)
        state = load_file(os.path.join(tmp, "model.safetensors"))
    model.load_state_dict(state, strict=True)
    if os.path.abspath(output) != os.path.abspath(model_dir):
        shutil.rmtree(output, ignore_errors=True)
    model.save_pretrained(output)
    return output
