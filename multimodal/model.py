"""`MultimodalModel`: encoders -> fusion -> task head, with save/load that rebuilds offline."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from encoders import Encoder, encoder_from_config
from encoders.base import EncoderOutput, Preprocessor
from fusion import ContrastiveFusion, Fusion, fusion_from_config

from .heads import TaskHead

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
ENCODER_ASSETS_DIR = "encoders"


@dataclass
class ModelOutput:
    """What `MultimodalModel.forward` returns."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    fused: Optional[torch.Tensor] = None
    embeddings: Optional[dict[str, torch.Tensor]] = None
    features: Optional[dict[str, EncoderOutput]] = None


class MultimodalModel(nn.Module):
    """Per-modality encoders, one fusion and an optional task head, all injected (TorchMultimodal style).

    With a `ContrastiveFusion` there is no head: the output carries normalised `embeddings` and the
    InfoNCE `loss` (which needs no labels). `modality_dropout=p` drops whole modalities per sample at
    random while training (never all of a sample's modalities); it does not apply to contrastive fusion.
    """

    def __init__(
        self,
        encoders: dict[str, Encoder],
        fusion: Fusion,
        head: Optional[TaskHead] = None,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not encoders:
            raise ValueError("MultimodalModel needs at least one encoder")
        if set(encoders) != set(fusion.modalities):
            raise ValueError(
                f"encoders {sorted(encoders)} do not match the fusion's modalities {fusion.modalities}"
            )
        for m, enc in encoders.items():
            if int(getattr(enc, "output_dim", -1)) != fusion.input_dims[m]:
                raise ValueError(
                    f"encoder {m!r} outputs {getattr(enc, 'output_dim', None)} features but the fusion "
                    f"expects {fusion.input_dims[m]}"
                )
        if isinstance(fusion, ContrastiveFusion):
            if head is not None:
                raise ValueError("a contrastive fusion is trained by its InfoNCE loss and takes no task head")
        elif head is not None and head.in_dim != fusion.output_dim:
            raise ValueError(f"head.in_dim {head.in_dim} != fusion.output_dim {fusion.output_dim}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.encoders = nn.ModuleDict(dict(sorted(encoders.items())))
        self.fusion = fusion
        self.head = head
        self.modality_dropout = float(modality_dropout)

    @property
    def modalities(self) -> list[str]:
        """Modality names, sorted."""
        return list(self.encoders.keys())

    @property
    def is_contrastive(self) -> bool:
        """True when the fusion is the contrastive dual-encoder head."""
        return isinstance(self.fusion, ContrastiveFusion)

    # ------------------------------------------------------------------ forward
    def encode(
        self,
        inputs: dict[str, dict[str, torch.Tensor]],
        present: Optional[dict[str, torch.Tensor]] = None,
    ) -> dict[str, EncoderOutput]:
        """Run the encoders of the modalities found in `inputs` (frozen ones without autograd).

        `present` is accepted for symmetry with `forward`: absent samples arrive as neutral placeholders and
        are masked later by the fusion.
        """
        unknown = [m for m in inputs if m not in self.encoders]
        if unknown:
            raise KeyError(f"inputs for unknown modalities {unknown}; the model has {self.modalities}")
        return {m: self._run_encoder(m, inputs[m]) for m in self.modalities if m in inputs}

    def _run_encoder(self, modality: str, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        encoder = self.encoders[modality]
        if getattr(encoder, "frozen", False):
            with torch.no_grad():
                return encoder(inputs)
        return encoder(inputs)

    def _features(
        self, inputs: dict[str, dict[str, torch.Tensor]], features: Optional[dict[str, EncoderOutput]]
    ) -> dict[str, EncoderOutput]:
        """Every modality's EncoderOutput: precomputed where given, else from its encoder."""
        features = features or {}
        out: dict[str, EncoderOutput] = {}
        for m in self.modalities:
            if m in features:
                out[m] = features[m]
            elif m in inputs:
                out[m] = self._run_encoder(m, inputs[m])
            else:
                raise KeyError(
                    f"no inputs or precomputed features for modality {m!r} (got inputs for {sorted(inputs)})"
                )
        return out

    def _presence(self, feats: dict[str, EncoderOutput], present: Optional[dict[str, torch.Tensor]]) -> dict:
        return self.fusion.presence(feats, present)

    def _drop_modalities(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop each present modality with probability p per sample, keeping at least one where there was one."""
        mods = self.modalities
        keep = torch.stack([present[m] for m in mods], dim=1)  # [B, M]
        dropped = keep & (torch.rand(keep.shape, device=keep.device) >= self.modality_dropout)
        emptied = keep.any(dim=1) & ~dropped.any(dim=1)
        # Restore one random present modality where all were dropped; branch-free, so no host sync.
        scores = torch.rand(keep.shape, device=keep.device).masked_fill(~keep, -1.0)
        restore = F.one_hot(scores.argmax(dim=1), len(mods)).bool() & emptied.unsqueeze(1)
        dropped = dropped | restore
        return {m: dropped[:, i] for i, m in enumerate(mods)}

    def forward(
        self,
        inputs: Optional[dict[str, dict[str, torch.Tensor]]] = None,
        present: Optional[dict[str, torch.Tensor]] = None,
        labels: Optional[torch.Tensor] = None,
        features: Optional[dict[str, EncoderOutput]] = None,
    ) -> ModelOutput:
        """Encode (skipping modalities given in `features`), fuse, apply the head and its loss."""
        feats = self._features(inputs or {}, features)
        present = self._presence(feats, present)
        if self.is_contrastive:
            fusion: ContrastiveFusion = self.fusion  # type: ignore[assignment]
            emb = fusion.embed(feats)
            fused = fusion.fuse_embeddings(emb, present)
            loss = fusion.contrastive_loss(feats, present, embeddings=emb)
            return ModelOutput(loss=loss, logits=None, fused=fused, embeddings=emb, features=feats)
        if self.training and self.modality_dropout > 0:
            present = self._drop_modalities(present)
        fused = self.fusion(feats, present)
        logits = self.head(fused) if self.head is not None else None
        loss = None
        if labels is not None:
            if self.head is None:
                raise ValueError("labels were given but the model has no task head")
            loss = self.head.loss(logits, labels)
        return ModelOutput(loss=loss, logits=logits, fused=fused, embeddings=None, features=feats)

    # ------------------------------------------------------------------ training helpers
    def _no_decay_names(self) -> set[str]:
        names: set[str] = set()
        for prefix, module in self.named_modules():
            hook = getattr(module, "no_weight_decay", None)
            if callable(hook):
                for n in hook():
                    names.add(f"{prefix}.{n}" if prefix else n)
        return names

    def parameter_groups(
        self, encoder_lr: float, head_lr: float, weight_decay: float
    ) -> list[dict[str, Any]]:
        """AdamW parameter groups: encoders vs fusion+head, each split into decay / no-decay; frozen params left out.

        No weight decay for biases, norm weights and every other 1-d parameter, `logit_scale`, and names
        that a module lists in its `no_weight_decay()` (learned tokens, timm position embeddings).
        """
        no_decay_names = self._no_decay_names()
        buckets: dict[tuple[str, bool], list[nn.Parameter]] = {
            ("encoders", True): [],
            ("encoders", False): [],
            ("head", True): [],
            ("head", False): [],
        }
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            part = "encoders" if name.startswith("encoders.") else "head"
            leaf = name.rsplit(".", 1)[-1]
            no_decay = p.ndim <= 1 or leaf == "bias" or leaf == "logit_scale" or name in no_decay_names
            buckets[(part, not no_decay)].append(p)
        groups = []
        for (part, decay), params in buckets.items():
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": encoder_lr if part == "encoders" else head_lr,
                        "weight_decay": weight_decay if decay else 0.0,
                        "name": f"{part}.{'decay' if decay else 'no_decay'}",
                    }
                )
        return groups

    def _select(self, names: Optional[Iterable[str]]) -> list[str]:
        names = self.modalities if names is None else ([names] if isinstance(names, str) else list(names))
        unknown = [n for n in names if n not in self.encoders]
        if unknown:
            raise KeyError(f"unknown encoder(s) {unknown}; the model has {self.modalities}")
        return names

    def freeze_encoders(self, names: Optional[Iterable[str]] = None) -> MultimodalModel:
        """Freeze the named encoders (all by default)."""
        for m in self._select(names):
            self.encoders[m].freeze()
        return self

    def unfreeze_encoders(self, names: Optional[Iterable[str]] = None) -> MultimodalModel:
        """Unfreeze the named encoders (all by default)."""
        for m in self._select(names):
            self.encoders[m].unfreeze()
        return self

    def get_preprocessors(self, train: bool = False) -> dict[str, Preprocessor]:
        """Each encoder's picklable preprocessor, by modality."""
        return {m: enc.get_preprocessor(train) for m, enc in self.encoders.items()}

    # ------------------------------------------------------------------ save / load
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable description that `from_pretrained` rebuilds with no network."""
        return {
            "format_version": FORMAT_VERSION,
            "encoders": {m: enc.get_config() for m, enc in self.encoders.items()},
            "fusion": self.fusion.get_config(),
            "head": self.head.get_config() if self.head is not None else None,
            "modality_dropout": self.modality_dropout,
            "frozen": [m for m, enc in self.encoders.items() if getattr(enc, "frozen", False)],
        }

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> None:
        """Write `model.safetensors`, `config.json` and each encoder's assets under `encoders/<modality>/`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors, tied = _untie_state_dict(self.state_dict())
        save_file(
            tensors,
            str(directory / WEIGHTS_NAME),
            metadata={"format": "pt", "format_version": str(FORMAT_VERSION)},
        )
        config = self.get_config()
        config["tied_weights"] = tied
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
        for m, enc in self.encoders.items():
            assets = directory / ENCODER_ASSETS_DIR / m
            assets.mkdir(parents=True, exist_ok=True)
            enc.save_assets(str(assets))

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike]) -> MultimodalModel:
        """Rebuild a model saved by `save_pretrained`, offline; returns it in eval mode."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: not a directory written by MultimodalModel.save_pretrained"
                )
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path}: invalid JSON ({err})") from err
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{config_path}: format_version {version!r} is not supported (this code reads {FORMAT_VERSION})"
            )
        for key in ("encoders", "fusion"):
            if key not in config:
                raise ValueError(f"{config_path}: missing field {key!r}")
        encoders = {}
        for m, enc_config in config["encoders"].items():
            assets = directory / ENCODER_ASSETS_DIR / m
            encoders[m] = encoder_from_config(enc_config, str(assets) if assets.is_dir() else None)
        fusion = fusion_from_config(config["fusion"])
        head = TaskHead(**config["head"]) if config.get("head") else None
        model = cls(encoders, fusion, head, modality_dropout=config.get("modality_dropout", 0.0))
        state = load_file(str(weights_path))
        for alias, canonical in config.get("tied_weights", {}).items():
            if canonical not in state:
                raise ValueError(
                    f"{weights_path}: tied weight {alias!r} points to missing tensor {canonical!r}"
                )
            state[alias] = state[canonical]
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"{weights_path} does not match the architecture in {config_path}: {err}"
            ) from err
        for m in config.get("frozen", []):
            model.encoders[m].freeze()
        return model.eval()


def _untie_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Make a state dict safetensors can write: one copy per tied tensor (aliases returned), no shared storage.

    Entries that are the same tensor (same storage, offset, shape and strides) are saved once under the
    first name and recorded as `{alias: canonical}`; entries that only partly overlap are saved as copies.
    """
    by_storage: dict[tuple[str, int], list[str]] = {}
    for name, t in state.items():
        if t.numel() == 0:
            continue
        key = (str(t.device), t.untyped_storage().data_ptr())
        by_storage.setdefault(key, []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    copy_names: set[str] = set()
    for names in by_storage.values():
        if len(names) < 2:
            continue
        first = state[names[0]]
        signature = (first.data_ptr(), tuple(first.shape), first.stride(), first.dtype)
        if all(
            (state[n].data_ptr(), tuple(state[n].shape), state[n].stride(), state[n].dtype) == signature
            for n in names
        ):
            for alias in names[1:]:
                tied[alias] = names[0]
        else:
            copy_names.update(names)
    for name, t in state.items():
        if name in tied:
            continue
        t = t.detach()
        whole = t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if name in copy_names or not t.is_contiguous() or not whole:
            t = t.contiguous().clone()
        tensors[name] = t.cpu()
    return tensors, tied
