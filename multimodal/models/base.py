"""What the fused model and the two-tower model share: encoders by modality, parameter groups, freezing,
preprocessors, and save/load as safetensors + JSON that rebuilds offline without running code from the folder.

A saved folder holds ``model.safetensors`` (tied tensors stored once), ``config.json`` (``model_type``,
``format_version``, every part's config) and ``encoders/<modality>/`` (tokenizer, HF config, feature
extractor). `load_model(dir)` picks the class from ``model_type``; user encoder kinds and fusions reload
once the module that registers them has been imported.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from encoders import Encoder, EncoderError, encoder_from_config
from encoders.base import EncoderOutput, Preprocessor
from encoders.registry import Registry
from multimodal.files import write_text
from multimodal.models import folder_checks
from multimodal.models import peft as peft_support
from multimodal.models.output import ModelOutput  # noqa: F401 (its old import path, multimodal.models.base)
from multimodal.models.param_groups import param_groups
from multimodal.models.unlock import freeze_norm_stats, lock_encoder

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
ENCODER_ASSETS_DIR = "encoders"

M = TypeVar("M", bound=type)

# model_type (as written in config.json) -> model class; `load_model` reads it.
MODEL_TYPES: Registry[type] = Registry("model_type")


class ModelFolderError(ValueError):
    """A saved model folder cannot be loaded as written: the message names the file and the field."""


class ModelFileMissingError(ModelFolderError, FileNotFoundError):
    """A file a saved model folder needs (config.json, model.safetensors) is not there."""


def register_model_type(name: str, cls: Optional[M] = None, *, override: bool = False) -> Any:
    """`load_model` rebuilds folders whose config.json says ``"model_type": name`` with this class (a class
    decorator, or a call with `cls`). Another class under a taken name is refused unless `override`."""

    def add(klass: M) -> M:
        MODEL_TYPES.register(name, klass, override=override)
        if not vars(klass).get("model_type"):  # the name its folders are saved under: the first one
            klass.model_type = name
        return klass

    return add if cls is None else add(cls)


def list_model_types(pattern: str = "*") -> list[str]:
    """Registered model types matching `pattern` (what config.json's ``model_type`` may say)."""
    return MODEL_TYPES.list(pattern)


class EncoderModel(nn.Module):
    """Base of models built from per-modality encoders (see module docstring); subclasses add the rest."""

    model_type = ""
    requires_tokens = False  # whether forward reads EncoderOutput.tokens (the feature cache stores them then)

    def __init__(self, encoders: dict[str, Encoder]) -> None:
        super().__init__()
        if not encoders:
            raise ValueError(f"{type(self).__name__} needs at least one encoder")
        self.encoders = nn.ModuleDict(dict(sorted(encoders.items())))

    @property
    def modalities(self) -> list[str]:
        """Modality names, sorted."""
        return list(self.encoders.keys())

    # ------------------------------------------------------------------ encoding
    def _run_encoder(self, modality: str, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        encoder = self.encoders[modality]
        if getattr(encoder, "frozen", False):
            with torch.no_grad():
                return encoder(inputs)
        return encoder(inputs)

    def _check_modalities(self, what: str, keys: Iterable[str]) -> None:
        """KeyError naming the model's modalities when `keys` holds any other (research code fails loudly)."""
        unknown = sorted(str(k) for k in keys if k not in self.encoders)
        if unknown:
            raise KeyError(f"{what} for unknown modalities {unknown}; the model has {self.modalities}")

    def check_present(self, present: Optional[dict[str, torch.Tensor]]) -> None:
        """Refuse presence masks of modalities the model does not have (a typo would otherwise be ignored)."""
        self._check_modalities("present", present or {})

    def encode_inputs(self, inputs: dict[str, dict[str, torch.Tensor]]) -> dict[str, EncoderOutput]:
        """Run the encoders of the modalities found in `inputs` (frozen ones without autograd)."""
        self._check_modalities("inputs", inputs)
        return {m: self._run_encoder(m, inputs[m]) for m in self.modalities if m in inputs}

    def _features(
        self, inputs: dict[str, dict[str, torch.Tensor]], features: Optional[dict[str, EncoderOutput]],
        required: Optional[Iterable[str]] = None,
    ) -> dict[str, EncoderOutput]:
        """EncoderOutputs for the modalities given: precomputed where given, else from the encoders; every
        modality in `required` must be there."""
        features = dict(features or {})
        self._check_modalities("inputs", inputs)
        self._check_modalities("features", features)
        out: dict[str, EncoderOutput] = {}
        for m in self.modalities:
            if m in features:
                out[m] = features[m] if isinstance(features[m], EncoderOutput) else EncoderOutput(features[m])
            elif m in inputs:
                out[m] = self._run_encoder(m, inputs[m])
        missing = [m for m in (required or []) if m not in out]
        if missing:
            raise KeyError(f"no inputs or precomputed features for modalities {missing} (got {sorted(out)})")
        return out

    def preprocess(self, samples: dict[str, Sequence[Any]], train: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """Raw samples by modality (None where a sample lacks one) -> ``{"inputs": ..., "present": ...}`` ready for
        ``model(**batch)``, through each encoder's own preprocessing (`train`: with its augmentation)."""
        self._check_modalities("samples", samples)
        sizes = {m: len(v) for m, v in samples.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"preprocess: every modality needs one entry per sample (None if absent); got {sizes}")
        inputs = {m: self.encoders[m].preprocess(list(v), train=train) for m, v in sorted(samples.items())}
        present = {m: torch.tensor([x is not None for x in v], dtype=torch.bool) for m, v in sorted(samples.items())}
        return {"inputs": inputs, "present": present}

    # ------------------------------------------------------------------ training helpers
    def parameter_groups(self, encoder_lr: float, head_lr: float, weight_decay: float,
                         layer_decay: Optional[float] = None) -> list[dict[str, Any]]:
        """AdamW groups: encoders vs everything else, each split into decay / no-decay; frozen params left out.

        No weight decay for biases, norm weights and every other 1-d parameter, `logit_scale`, and names that
        a module lists in its `no_weight_decay()` (learned tokens, timm position embeddings). With `layer_decay`,
        encoder layers below the top train at smaller rates (`multimodal.models.param_groups`).
        """
        return param_groups(self, encoder_lr, head_lr, weight_decay, layer_decay)

    def _select(self, names: Optional[Iterable[str]]) -> list[str]:
        names = self.modalities if names is None else ([names] if isinstance(names, str) else list(names))
        unknown = [n for n in names if n not in self.encoders]
        if unknown:
            raise KeyError(f"unknown encoder(s) {unknown}; the model has {self.modalities}")
        return names

    def freeze_encoders(self, names: Optional[Iterable[str]] = None) -> EncoderModel:
        """Freeze the named encoders (all by default)."""
        for m in self._select(names):
            self.encoders[m].freeze()
        return self

    def unfreeze_encoders(self, names: Optional[Iterable[str]] = None) -> EncoderModel:
        """Unfreeze the named encoders (all by default)."""
        for m in self._select(names):
            self.encoders[m].unfreeze()
        return self

    def lock(self, modality: str, unlocked_groups: int = 0) -> EncoderModel:
        """Freeze the `modality` tower except its last `unlocked_groups` layer groups (open_clip's
        ``lock_image_tower(unlocked_groups=...)``); frozen BatchNorm statistics stay fixed."""
        self._select(modality)
        lock_encoder(self.encoders[modality], unlocked_groups)
        return self

    def freeze_norm_stats(self, names: Optional[Iterable[str]] = None, enabled: bool = True) -> EncoderModel:
        """Keep the BatchNorm running statistics of the named encoders (all by default) fixed while they train
        (`multimodal.models.unlock.freeze_norm_stats`); ``enabled=False`` lets them update again."""
        for m in self._select(names):
            freeze_norm_stats(self.encoders[m], enabled)
        return self

    def get_preprocessors(self, train: bool = False) -> dict[str, Preprocessor]:
        """Each encoder's picklable preprocessor, by modality."""
        return {m: enc.get_preprocessor(train) for m, enc in self.encoders.items()}

    # ------------------------------------------------------------------ save / load
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable description that `from_pretrained` rebuilds with no network."""
        return {
            "model_type": self.model_type,
            "format_version": FORMAT_VERSION,
            "encoders": {m: enc.get_config() for m, enc in self.encoders.items()},
            "frozen": [m for m, enc in self.encoders.items() if getattr(enc, "frozen", False)],
            "norm_stats_frozen": [m for m, enc in self.encoders.items() if getattr(enc, "norm_stats_frozen", False)],
        }

    @classmethod
    def _from_config(cls, config: dict[str, Any], encoders: dict[str, Encoder]) -> EncoderModel:  # pragma: no cover
        """Build the model's architecture (fresh weights) from its config and rebuilt encoders."""
        raise NotImplementedError

    def save_pretrained(self, directory: Union[str, os.PathLike], state_dict: Optional[dict] = None) -> None:
        """Write `model.safetensors`, `config.json` and each encoder's assets under `encoders/<modality>/`
        (`state_dict`: the weights to write instead of this module's own, e.g. gathered from FSDP shards)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # LoRA: adapters + heads only; under FSDP the caller passes the gathered full state dict
        tensors, tied = untie_state_dict(peft_support.weights_to_save(self, state_dict))
        tmp = directory / f".{WEIGHTS_NAME}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt", "format_version": str(FORMAT_VERSION)})
        os.replace(tmp, directory / WEIGHTS_NAME)
        for m, enc in self.encoders.items():
            assets = directory / ENCODER_ASSETS_DIR / m
            assets.mkdir(parents=True, exist_ok=True)
            enc.save_assets(str(assets))
        config = {**self.get_config(), **peft_support.config_entries(self), "tied_weights": tied}
        write_text(directory / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True))

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], trust_remote_code: bool = False) -> EncoderModel:
        """Rebuild a model saved by `save_pretrained`, offline; returns it in eval mode. Python code shipped in the
        folder never runs unless this call passes ``trust_remote_code=True`` (the saved config cannot turn it on)."""
        model = load_model(directory, trust_remote_code=trust_remote_code)
        if not isinstance(model, cls):
            raise TypeError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}; use multimodal.load_model")
        return model


def read_model_config(directory: Union[str, os.PathLike]) -> dict[str, Any]:
    """The checked ``config.json`` of a saved model folder."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ModelFileMissingError(f"{path} not found: not a directory written by save_pretrained")
    try:
        config = folder_checks.read_json_file(config_path)
    except folder_checks.FolderFileError as err:
        raise ModelFolderError(str(err)) from err
    if not isinstance(config, dict):
        raise ModelFolderError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFolderError(f"{config_path}: format_version {version!r} is not supported (this code reads {FORMAT_VERSION})")
    encoders = config.get("encoders")
    if not isinstance(encoders, dict) or not encoders:
        raise ModelFolderError(f"{config_path}: field 'encoders' must be a non-empty object (modality -> encoder "
                               f"config), got {type(encoders).__name__}")
    for m, enc in encoders.items():
        if not isinstance(enc, dict):
            raise ModelFolderError(f"{config_path}: field 'encoders.{m}' must be an object (the encoder's config), "
                                   f"got {type(enc).__name__}")
    frozen = config.get("frozen", [])
    if not isinstance(frozen, list) or any(m not in encoders for m in frozen):
        raise ModelFolderError(f"{config_path}: field 'frozen' must list modalities of 'encoders' "
                               f"({sorted(encoders)}), got {frozen!r}")
    stats = config.get("norm_stats_frozen", [])
    if not isinstance(stats, list) or any(m not in encoders for m in stats):
        raise ModelFolderError(f"{config_path}: field 'norm_stats_frozen' must list modalities of 'encoders' "
                               f"({sorted(encoders)}), got {stats!r}")
    tied = config.get("tied_weights", {})
    if not isinstance(tied, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tied.items()):
        raise ModelFolderError(f"{config_path}: field 'tied_weights' must map tensor names to tensor names")
    return config


def _rebuild_encoder(config_path: Path, modality: str, enc_config: Any, assets: Path, trust_remote_code: bool,
                     meta: bool) -> Encoder:
    """One encoder from its config and assets (`meta`: on the meta device, if it can be built there)."""
    assets_dir = str(assets) if assets.is_dir() else None
    if meta:
        with contextlib.suppress(Exception), torch.device("meta"):  # else built for real below, which reports a
            return encoder_from_config(enc_config, assets_dir, trust_remote_code=trust_remote_code)  # config error
    try:
        return encoder_from_config(enc_config, assets_dir, trust_remote_code=trust_remote_code)
    # EncoderError first: an unknown kind (UnknownEncoderError) is also a KeyError
    except (EncoderError, TypeError, ValueError, RuntimeError, OSError) as err:
        raise ModelFolderError(f"{config_path}: field 'encoders.{modality}' does not rebuild an encoder: "
                               f"{type(err).__name__}: {err}") from err
    except KeyError as err:
        raise ModelFolderError(f"{config_path}: field 'encoders.{modality}' lacks {err}") from err


def _assemble(directory: Path, config: dict[str, Any], encoders: dict[str, Encoder], meta: bool) -> EncoderModel:
    """The model class of ``model_type`` around rebuilt `encoders` (fusion and head on the meta device if `meta`)."""
    model_type = config.get("model_type") or ("dual_encoder" if (config.get("fusion") or {}).get("name") == "contrastive"
                                              else "fused")  # folders written before model_type existed
    config_path = directory / CONFIG_NAME
    if not isinstance(model_type, str) or not MODEL_TYPES.is_registered(model_type):
        raise ModelFolderError(f"{config_path}: {MODEL_TYPES.unknown(str(model_type))}")
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            return MODEL_TYPES.get(model_type)._from_config(config, encoders)
    except KeyError as err:
        raise ModelFolderError(f"{config_path}: a {model_type} model needs field {err}") from err
    except (TypeError, ValueError, RuntimeError) as err:
        raise ModelFolderError(f"{config_path}: cannot rebuild the {model_type} model: {err}") from err


def _build_model(directory: Path, config: dict[str, Any], trust_remote_code: bool) -> EncoderModel:
    """The architecture `config` describes, with its encoders' assets, and random weights."""
    encoders = {m: _rebuild_encoder(directory / CONFIG_NAME, m, c, directory / ENCODER_ASSETS_DIR / m,
                                    trust_remote_code, meta=False) for m, c in config["encoders"].items()}
    encoders = peft_support.restore_encoders(config, encoders)  # LoRA: pretrained base from its spec + adapters
    model = _assemble(directory, config, encoders, meta=False)
    peft_support.finish_restore(model, config)
    return model


def _expected_shapes(directory: Path, config: dict[str, Any],
                     trust_remote_code: bool) -> tuple[dict[str, tuple[int, ...]], Optional[ModelFolderError]]:
    """Every tensor shape of the architecture `config` describes, built on the meta device (nothing allocated, except
    for encoders that cannot be built there), and the error of a config whose parts do not fit together (then only
    the encoders' shapes are known)."""
    encoders = {m: _rebuild_encoder(directory / CONFIG_NAME, m, c, directory / ENCODER_ASSETS_DIR / m,
                                    trust_remote_code, meta=True) for m, c in config["encoders"].items()}
    shapes = {f"encoders.{m}.{k}": tuple(v.shape) for m, e in encoders.items() for k, v in e.state_dict().items()}
    try:
        model = _assemble(directory, config, encoders, meta=True)
    except ModelFolderError as err:
        return shapes, err
    return {**shapes, **{k: tuple(v.shape) for k, v in model.state_dict().items()}}, None


def load_model(directory: Union[str, os.PathLike], trust_remote_code: bool = False) -> EncoderModel:
    """Rebuild any model saved by `save_pretrained` (class from ``model_type``), offline, in eval mode; code in the
    folder runs only with ``trust_remote_code=True`` passed here. The folder's files are checked first
    (`multimodal.models.folder_checks`): each parses, and the weights' shapes fit the config before anything
    is allocated."""
    directory = Path(directory)
    config = read_model_config(directory)
    weights_path = directory / WEIGHTS_NAME
    try:
        folder_checks.check_asset_files(directory)
        if weights_path.is_file() and not config.get("peft"):  # LoRA folders hold adapters only
            header = folder_checks.weights_header(weights_path)
            header.update({a: header[c] for a, c in config.get("tied_weights", {}).items() if c in header})
            expected, assembly_error = _expected_shapes(directory, config, trust_remote_code)
            # The weights name the tensor whose width is off, more precisely than the assembly's complaint.
            folder_checks.check_shapes(expected, header, weights_path, directory / CONFIG_NAME)
            if assembly_error is not None:
                raise assembly_error  # before the real build allocates the encoders
    except folder_checks.FolderFileError as err:
        raise ModelFolderError(str(err)) from None
    model = _build_model(directory, config, trust_remote_code)
    load_weights(model, directory, config)
    for m in config.get("frozen", []):
        model.encoders[m].freeze()
    for m in config.get("norm_stats_frozen", []):
        freeze_norm_stats(model.encoders[m])
    return model.eval()


def load_weights(model: nn.Module, directory: Union[str, os.PathLike], config: Optional[dict] = None) -> None:
    """Load ``model.safetensors`` written by `save_pretrained` into an existing model of the same architecture;
    a tensor of an unknown dtype or holding NaN/inf is refused, naming it."""
    directory = Path(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise ModelFileMissingError(f"{weights_path} not found: was the model saved?")
    config = read_model_config(directory) if config is None else config
    try:
        folder_checks.weights_header(weights_path)
        state = load_file(str(weights_path))
        folder_checks.check_tensors(state, weights_path)
    except folder_checks.FolderFileError as err:
        raise ModelFolderError(str(err)) from None
    except (SafetensorError, OSError) as err:  # a torn, truncated or foreign file
        raise ModelFolderError(f"{weights_path}: not a readable safetensors file ({type(err).__name__}: {err})") from err
    for alias, canonical in config.get("tied_weights", {}).items():
        if canonical not in state:
            raise ModelFolderError(f"{weights_path}: tied weight {alias!r} points to missing tensor {canonical!r}")
        state[alias] = state[canonical]
    rename = getattr(model, "legacy_state_names", None)
    if callable(rename):
        state = rename(state, config)
    if config.get("peft"):  # adapters + heads; the base came from its spec
        peft_support.load_partial(model, state, str(weights_path))
        return
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFolderError(f"{weights_path} does not match the architecture in {directory / CONFIG_NAME}: {err}") from err


def untie_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Make a state dict safetensors can write: one copy per tied tensor (aliases returned), no shared storage.

    Entries that are the same tensor (same storage, offset, shape and strides) are saved once under the first
    name and recorded as `{alias: canonical}`; entries that only partly overlap are saved as copies.
    """
    by_storage: dict[tuple[str, int], list[str]] = {}
    for name, t in state.items():
        if t.numel() == 0:
            continue
        by_storage.setdefault((str(t.device), t.untyped_storage().data_ptr()), []).append(name)
    tied: dict[str, str] = {}
    copy_names: set[str] = set()
    for names in by_storage.values():
        if len(names) < 2:
            continue
        first = state[names[0]]
        signature = (first.data_ptr(), tuple(first.shape), first.stride(), first.dtype)
        if all((state[n].data_ptr(), tuple(state[n].shape), state[n].stride(), state[n].dtype) == signature
               for n in names):
            for alias in names[1:]:
                tied[alias] = names[0]
        else:
            copy_names.update(names)
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name in tied:
            continue
        t = t.detach()
        whole = t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if name in copy_names or not t.is_contiguous() or not whole:
            t = t.contiguous().clone()
        tensors[name] = t.cpu()
    return tensors, tied
