"""LoRA adapters on encoders through the `peft` library, saved as adapters + heads over a named base.

`apply_peft(model, settings)` wraps each chosen encoder's backbone with ``peft.get_peft_model``: the base
weights are frozen (BatchNorm statistics too), only the LoRA matrices (and the model's fusion / heads) train.
Default targets by family (`default_targets`), as module-name suffixes that peft matches:

- Hugging Face text and audio models: every ``nn.Linear`` inside the transformer layers (attention q/k/v/out
  and the feed-forward layers);
- timm ViT-style backbones: every ``nn.Linear`` inside ``blocks`` (the fused ``qkv``, ``proj``, ``fc1``,
  ``fc2``: the fused qkv is an ordinary Linear in timm, so LoRA applies to it directly);
- timm CNNs (also audio-mel backbones): the 1x1 convolutions inside ``blocks`` that project a block's
  output (``conv_pwl`` in EfficientNets, ``conv3`` in ResNet bottlenecks), see `CNN_TARGETS`.

`save_pretrained` of such a model writes only the adapters, the fusion and the heads (`weights_to_save`); the
config records the base encoder's spec, its creation kwargs and a SHA-256 of its weights, and `load_model`
rebuilds the pretrained base from the spec (`restore_encoders`), checks the hash and loads the adapters.
A base that was not pretrained (random init) is saved in full. `merge_adapters` folds the adapters into the
base weights (peft's ``merge_and_unload``) and returns a plain model for export.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import torch
from torch import nn

from encoders import create_encoder
from encoders.base import jsonable
from multimodal.models.unlock import _HF_LAYER, keep_frozen_norms_in_eval

# CNN block outputs, by timm family: EfficientNet / MobileNet (conv_pwl), ResNet / RegNet (conv3), ConvNeXt (fc2
# is a Linear, found by the transformer rule).
CNN_TARGETS = ("conv_pwl", "conv3")


def _inner(backbone: nn.Module) -> nn.Module:
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def _in_blocks(name: str) -> bool:
    return bool(_HF_LAYER.search(name + ".")) or name.startswith("blocks.") or ".blocks." in name or name.startswith("stages.")


def candidate_modules(encoder: nn.Module) -> list[str]:
    """Leaf names of the layers LoRA can wrap (Linear, Conv1d/2d, Embedding), for error messages."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
    return sorted({n.rsplit(".", 1)[-1] for n, m in _inner(encoder.backbone).named_modules() if isinstance(m, kinds) and n})


def default_targets(encoder: nn.Module) -> list[str]:
    """The family default (module-docstring rules) as peft target-module suffixes."""
    backbone = _inner(encoder.backbone)
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in backbone.named_modules()
                     if isinstance(m, nn.Linear) and _in_blocks(n)})
    if linear:
        return linear
    convs = sorted({n.rsplit(".", 1)[-1] for n, m in backbone.named_modules()
                    if isinstance(m, nn.Conv2d) and m.groups == 1 and _in_blocks(n)})
    preferred = [c for c in convs if c in CNN_TARGETS]
    return preferred or convs


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def resolve_targets(encoder: nn.Module, target_modules: Any, modality: str) -> list[str]:
    """The target list for one encoder (config value or family default); raises naming the key if none match."""
    if isinstance(target_modules, dict):
        targets = target_modules.get(modality)
        key = f"model.peft.target_modules.{modality}"
    else:
        targets, key = target_modules, "model.peft.target_modules"
    if not targets:
        targets = default_targets(encoder)
        key = f"the default LoRA targets for {encoder.spec}"
    names = [n for n, _ in _inner(encoder.backbone).named_modules()]
    found = [t for t in targets if any(_matches(n, [t]) for n in names)]
    missing = [t for t in targets if t not in found]
    if not found or missing:
        raise ValueError(f"{key}: {missing or targets} match no module of {encoder.spec} ({modality}); "
                         f"candidates: {', '.join(candidate_modules(encoder))}")
    return list(targets)


def state_hash(module: nn.Module) -> str:
    """SHA-256 over the module's state dict (names, dtypes, shapes and bytes), in key order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _inject(encoder: nn.Module, lora: dict[str, Any]) -> None:
    import peft

    config = peft.LoraConfig(r=int(lora["r"]), lora_alpha=float(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                             target_modules=list(lora["target_modules"]), bias="none")
    encoder.unfreeze()
    encoder.backbone = peft.get_peft_model(encoder.backbone, config)
    encoder._adapter_names = {n for n, p in encoder.named_parameters() if p.requires_grad}
    keep_frozen_norms_in_eval(encoder)


def apply_peft(model: Any, settings: Any, pretrained: bool = True,
               encoder_kwargs: Optional[dict[str, dict]] = None) -> Any:
    """Wrap the chosen encoders with LoRA (`settings`: a `PeftConfig`); records what `load_model` needs."""
    if settings.method != "lora":
        raise ValueError(f"model.peft.method: only 'lora' is supported, got {settings.method!r}")
    modalities = list(settings.modalities) if settings.modalities else list(model.encoders)
    unknown = [m for m in modalities if m not in model.encoders]
    if unknown:
        raise ValueError(f"model.peft.modalities names {unknown}, which are not in model.encoders ({sorted(model.encoders)})")
    info = dict(getattr(model, "peft_info", {}) or {})
    for m in modalities:
        encoder = model.encoders[m]
        lora = {"r": settings.r, "alpha": settings.alpha, "dropout": settings.dropout,
                "target_modules": resolve_targets(encoder, settings.target_modules, m)}
        entry = {"spec": encoder.spec, "kwargs": jsonable(dict((encoder_kwargs or {}).get(m, {}))),
                 "pretrained": bool(pretrained), "base_sha256": state_hash(encoder), "lora": lora}
        _inject(encoder, lora)
        info[m] = entry
    model.peft_info = info
    return model


def config_entries(model: Any) -> dict[str, Any]:
    """What `save_pretrained` adds to config.json ({"peft": ...} for a model with adapters)."""
    info = getattr(model, "peft_info", None)
    return {"peft": jsonable(info)} if info else {}


def _base_keys(model: Any) -> set[str]:
    """State-dict keys restored from the base spec rather than saved (pretrained bases of LoRA encoders)."""
    keys: set[str] = set()
    for m, entry in (getattr(model, "peft_info", None) or {}).items():
        if not entry.get("pretrained"):
            continue
        encoder = model.encoders[m]
        adapters = getattr(encoder, "_adapter_names", set())
        keys |= {f"encoders.{m}.{k}" for k in encoder.state_dict() if k not in adapters}
    return keys


def weights_to_save(model: Any, state: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """The state dict `save_pretrained` writes (`state`, default the model's): everything, minus pretrained bases
    of LoRA encoders."""
    state = model.state_dict() if state is None else state
    skip = _base_keys(model)
    return {k: v for k, v in state.items() if k not in skip} if skip else state


def load_partial(model: Any, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a LoRA model's saved weights; every other tensor must be one restored from the base."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = _base_keys(model)
    bad_missing = [k for k in missing if k not in allowed]
    if unexpected or bad_missing:
        raise ValueError(f"{source} does not match the LoRA model: missing {bad_missing[:5]}, unexpected {list(unexpected)[:5]}")


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(jsonable(value), sort_keys=True))


def restore_encoders(config: dict[str, Any], encoders: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """For a saved LoRA model: rebuild each pretrained base from its spec, check it, add the adapters."""
    out = dict(encoders)
    for m, entry in (config.get("peft") or {}).items():
        if entry.get("pretrained"):
            base = create_encoder(entry["spec"], pretrained=True, **dict(entry.get("kwargs") or {}))
            saved = {k: v for k, v in config["encoders"][m].items()}
            if _canonical(base.get_config()) != _canonical(saved):
                # other creation kwargs (e.g. img_size) than recorded: the saved architecture, the base's weights
                try:
                    encoders[m].load_state_dict(base.state_dict(), strict=True)
                except RuntimeError as err:
                    raise ValueError(f"the base encoder {entry['spec']!r} rebuilt for the {m} adapters has another "
                                     f"config than the one they were trained on: {base.get_config()} vs {saved} "
                                     f"({str(err).splitlines()[0]})") from err
                base = encoders[m]
            digest = state_hash(base)
            if digest != entry["base_sha256"]:
                raise ValueError(f"the pretrained weights of {entry['spec']!r} ({m}) differ from those the adapters "
                                 f"were trained on (sha256 {digest[:12]} vs {entry['base_sha256'][:12]})")
            out[m] = base
        _inject(out[m], entry["lora"])
    return out


def finish_restore(model: Any, config: dict[str, Any]) -> None:
    """Record the adapters' provenance on a model rebuilt by `load_model`."""
    if config.get("peft"):
        model.peft_info = dict(config["peft"])


def merge_adapters(model: Any) -> Any:
    """Fold the LoRA weights into the base weights (peft's merge_and_unload): a plain model for export."""
    for m in list(getattr(model, "peft_info", None) or {}):
        encoder = model.encoders[m]
        encoder.backbone = encoder.backbone.merge_and_unload()
        encoder._adapter_names = set()
        encoder._keep_eval = set()
    model.peft_info = {}
    return model
