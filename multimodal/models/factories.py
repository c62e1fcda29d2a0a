"""One-call model factories, in the spirit of open_clip's ``create_model_and_transforms``, and named presets.

`create_model` builds a fused `MultimodalModel` (encoders -> fusion -> task head) and `create_dual_encoder` a
two-tower `DualEncoder`, from encoder specs (or ready encoders) or from a preset. The model comes back with
its preprocessing ready: ``model.preprocess({"text": [...], "image": [...]})`` turns raw samples into the
batch ``model(**batch)`` takes, through each encoder's own tokenizer / transforms / feature extractor.

A preset is a YAML file in ``multimodal/models/presets/`` (`list_presets()`); a path to a YAML file of the
same form works too. Arguments given to the factory override the preset's values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from encoders import Encoder, create_encoder
from encoders.registry import Registry
from fusion import create_fusion
from multimodal.models.dual import DualEncoder
from multimodal.models.fused import MultimodalModel
from multimodal.models.heads import TaskHead

PRESET_DIR = Path(__file__).parent / "presets"
COMMON_KEYS = {"description", "model", "encoders", "encoder_kwargs", "lock"}
FUSED_KEYS = {"fusion", "fusion_dim", "fusion_kwargs", "num_outputs", "label_type", "head_hidden_dim", "head_dropout",
              "modality_dropout"}
DUAL_KEYS = {"embed_dim", "projection", "projection_hidden_dim", "dropout", "gather", "pairs"}
MODEL_KINDS = {"fused": FUSED_KEYS, "dual_encoder": DUAL_KEYS}

EncoderSpecs = Mapping[str, Union[str, Encoder]]


@dataclass(frozen=True)
class Preset:
    """A named whole-model configuration: which model, which encoders, and that model's settings."""

    name: str
    model: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)


def read_preset(path: Union[str, os.PathLike]) -> Preset:
    """A `Preset` from a YAML file; an unknown or ill-typed field is a ValueError naming the file and field."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not a readable preset ({type(err).__name__}: {err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a preset is a mapping of fields, got {type(values).__name__}")
    kind = values.get("model")
    if kind not in MODEL_KINDS:
        raise ValueError(f"{path}: field 'model' must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
    unknown = sorted(set(values) - COMMON_KEYS - MODEL_KINDS[kind])
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown} for a {kind} preset; known: "
                         f"{sorted(COMMON_KEYS | MODEL_KINDS[kind])}")
    encoders = values.get("encoders")
    if not isinstance(encoders, dict) or not encoders or not all(isinstance(s, str) for s in encoders.values()):
        raise ValueError(f"{path}: field 'encoders' must map modalities to encoder specs ('kind:name')")
    settings = {k: v for k, v in values.items() if k not in ("model", "description")}
    return Preset(path.stem, kind, str(values.get("description", "")), settings)


PRESETS: Registry[Preset] = Registry("preset")
for _file in sorted(PRESET_DIR.glob("*.yaml")):
    PRESETS.register(_file.stem, read_preset(_file))


def list_presets(pattern: str = "*") -> list[str]:
    """Names of the packaged presets matching `pattern` (wildcards, as timm's ``list_models``)."""
    return sorted(PRESETS.list(pattern))


def get_preset(name: str) -> Preset:
    """A packaged preset by name, or one read from a YAML file path; `UnknownNameError` suggests the closest."""
    if name not in PRESETS and str(name).endswith((".yaml", ".yml")) and os.path.isfile(name):
        return read_preset(name)
    return PRESETS.get(name)


def _settings(preset: Optional[str], kind: str, given: dict[str, Any], factory: str) -> dict[str, Any]:
    """The preset's settings (if any) under the arguments given explicitly (those that are not None)."""
    settings: dict[str, Any] = {}
    if preset is not None:
        chosen = get_preset(preset)
        if chosen.model != kind:
            other = "create_dual_encoder" if chosen.model == "dual_encoder" else "create_model"
            raise ValueError(f"{factory}: preset {chosen.name!r} builds a {chosen.model} model; use {other}")
        settings = dict(chosen.settings)
    settings.update({k: v for k, v in given.items() if v is not None})
    if not settings.get("encoders"):
        raise ValueError(f"{factory}: give encoders={{modality: 'kind:name' or an Encoder}} or a preset "
                         f"(one of {list_presets()})")
    return settings


def _encoders(specs: EncoderSpecs, encoder_kwargs: Optional[Mapping[str, dict]], pretrained: bool) -> dict[str, Encoder]:
    """Encoders by modality: ready `Encoder`s as given, spec strings through `create_encoder`."""
    kwargs = dict(encoder_kwargs or {})
    unknown = sorted(set(kwargs) - set(specs))
    if unknown:
        raise ValueError(f"encoder_kwargs names {unknown}, which are not among the encoders {sorted(specs)}")
    out = {}
    for m, spec in specs.items():
        if isinstance(spec, Encoder):
            out[m] = spec
        elif isinstance(spec, str):
            out[m] = create_encoder(spec, pretrained=pretrained, **dict(kwargs.get(m) or {}))
        else:
            raise TypeError(f"encoders[{m!r}] must be a spec string ('kind:name') or an Encoder, got {type(spec).__name__}")
    return out


def _lock(model: Any, lock: Optional[Mapping[str, int]]) -> Any:
    for modality, unlocked in (lock or {}).items():
        model.lock(modality, unlocked_groups=int(unlocked))
    return model


def create_model(encoders: Optional[EncoderSpecs] = None, fusion: Optional[str] = None,
                 num_outputs: Optional[int] = None, label_type: Optional[str] = None, *, preset: Optional[str] = None,
                 pretrained: bool = True, fusion_dim: Optional[int] = None, encoder_kwargs: Optional[dict] = None,
                 head_hidden_dim: Optional[int] = None, head_dropout: Optional[float] = None,
                 modality_dropout: Optional[float] = None, lock: Optional[Mapping[str, int]] = None,
                 **fusion_kwargs: Any) -> MultimodalModel:
    """A fused `MultimodalModel` with its preprocessing ready (`model.preprocess`), from encoder specs or ready
    encoders, or a `preset`. Extra keyword arguments go to the fusion; `lock` maps a modality to the number
    of its last layer groups left trainable (0: frozen), as `model.lock` does."""
    given = {"encoders": encoders, "fusion": fusion, "num_outputs": num_outputs, "label_type": label_type,
             "fusion_dim": fusion_dim, "encoder_kwargs": encoder_kwargs, "head_hidden_dim": head_hidden_dim,
             "head_dropout": head_dropout, "modality_dropout": modality_dropout, "lock": lock}
    s = _settings(preset, "fused", given, "create_model")
    if s.get("num_outputs") is None:
        raise ValueError("create_model: num_outputs is required (classes, or regression targets)")
    towers = _encoders(s["encoders"], s.get("encoder_kwargs"), pretrained)
    dims = {m: int(e.output_dim) for m, e in towers.items()}
    kwargs = {**dict(s.get("fusion_kwargs") or {}), **fusion_kwargs}
    fused = create_fusion(s.get("fusion", "concat"), dims, int(s.get("fusion_dim", 256)), **kwargs)
    head = TaskHead(fused.output_dim, int(s["num_outputs"]), label_type=s.get("label_type", "single_label"),
                    hidden_dim=s.get("head_hidden_dim"), dropout=float(s.get("head_dropout", 0.0)))
    model = MultimodalModel(towers, fusion=fused, head=head, modality_dropout=float(s.get("modality_dropout", 0.0)))
    return _lock(model, s.get("lock"))


def create_dual_encoder(encoders: Optional[EncoderSpecs] = None, embed_dim: Optional[int] = None, *,
                        preset: Optional[str] = None, pretrained: bool = True, encoder_kwargs: Optional[dict] = None,
                        lock: Optional[Mapping[str, int]] = None, **head_kwargs: Any) -> DualEncoder:
    """A two-tower `DualEncoder` with its preprocessing ready (`model.preprocess`), from encoder specs or ready
    encoders, or a `preset`. Extra keyword arguments go to its `ContrastiveHead` (projection, hidden_dim,
    gather, pairs, ...); `lock` as in `create_model` (open_clip's ``lock_image_tower``)."""
    given = {"encoders": encoders, "embed_dim": embed_dim, "encoder_kwargs": encoder_kwargs, "lock": lock}
    s = _settings(preset, "dual_encoder", given, "create_dual_encoder")
    towers = _encoders(s["encoders"], s.get("encoder_kwargs"), pretrained)
    head = {k: s[k] for k in ("projection", "dropout", "gather", "pairs") if k in s}
    if "projection_hidden_dim" in s:
        head["hidden_dim"] = s["projection_hidden_dim"]
    model = DualEncoder(towers, embed_dim=int(s.get("embed_dim", 256)), **{**head, **head_kwargs})
    return _lock(model, s.get("lock"))
