"""Experiment configuration: typed dataclasses loaded from YAML with dotted ``key=value`` overrides.

A config is a tree of dataclasses (``ExperimentConfig`` -> ``data``/``model``/``train``/``eval``).
``load_config(path, overrides)`` reads YAML, applies overrides such as ``train.epochs=3`` or
``model.fusion=gated`` (values parsed with YAML typing, so ``3`` is an int, ``[1,5]`` a list and
``null`` None), and validates every key against the dataclass fields: an unknown key gets a
"did you mean" suggestion, a wrong type or an invalid ``Literal`` choice names the key.

Other recipes extend the tree by subclassing: any dataclass works as ``cls`` in ``load_config``
and ``config_from_dict``, and ``dict``-typed fields accept free-form sub-keys
(``model.encoders.text=text:bert-base-uncased``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, or its value has the wrong type or is not an allowed choice."""


TASKS = ("single_label", "multi_label", "regression", "contrastive")
FUSIONS = ("concat", "late", "gated", "attention", "lowrank_tensor", "film", "contrastive")


@dataclass
class DataConfig:
    """Where the paired data comes from and how rows map to modalities and labels."""

    # Manifests (CSV, JSONL or Parquet); relative file paths inside them resolve against the manifest's folder.
    train: Optional[str] = None
    validation: Optional[str] = None
    test: Optional[str] = None
    # A `datasets` directory saved with `save_to_disk` (Dataset or DatasetDict), instead of manifests.
    hf_dataset: Optional[str] = None
    # Built-in demo data generated locally: "text_image" or "text_audio" (ignores the manifests above).
    demo: Optional[Literal["text_image", "text_audio"]] = None
    demo_size: int = 480
    demo_dir: Optional[str] = None
    # Column names; a modality whose column is null is not read.
    text_column: Optional[str] = "text"
    image_column: Optional[str] = "image"
    audio_column: Optional[str] = "audio"
    label_column: Optional[str] = "label"
    # Column holding "train"/"validation"/"test" per row, if the manifest carries its own split.
    split_column: Optional[str] = None
    multi_label_separator: str = "|"
    # Fixed label vocabulary; by default it is built from the training split.
    labels: Optional[list[str]] = None
    # Used when only one manifest is given and it has no split column.
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    stratify: bool = True
    # Modalities that must be present in every row; an absent one elsewhere becomes present=False.
    required_modalities: list[str] = field(default_factory=list)
    on_bad_sample: Literal["error", "skip"] = "error"
    # Open/verify every file once when the dataset is built, so errors and skip counts come before training.
    validate: bool = True
    num_workers: int = 2
    # Directory for frozen-encoder features ("auto": ~/.cache/multimodal-finetune/features); encoders that
    # stay frozen for the whole run are encoded once (eval preprocessing, no augmentation) and read from disk.
    feature_cache: Optional[str] = None
    max_train_samples: Optional[int] = None


@dataclass
class ModelConfig:
    """Encoders (by spec string), fusion head and task head."""

    # modality -> encoder spec, e.g. {text: "text:sentence-transformers/all-MiniLM-L6-v2"}.
    encoders: dict[str, str] = field(
        default_factory=lambda: {
            "text": "text:sentence-transformers/all-MiniLM-L6-v2",
            "image": "image:tf_efficientnet_lite0",
        }
    )
    # modality -> extra kwargs for `create_encoder` (e.g. {image: {img_size: 128}}).
    encoder_kwargs: dict[str, dict] = field(default_factory=dict)
    pretrained: bool = True
    fusion: Literal["concat", "late", "gated", "attention", "lowrank_tensor", "film", "contrastive"] = "concat"
    fusion_dim: int = 256
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)
    task: Literal["single_label", "multi_label", "regression", "contrastive"] = "single_label"
    head_hidden_dim: Optional[int] = None
    head_dropout: float = 0.1
    modality_dropout: float = 0.0
    # Freeze every encoder; with `unfreeze_after_epochs` they train again from that epoch on.
    freeze_encoders: bool = False
    unfreeze_after_epochs: Optional[int] = None
    grad_checkpointing: bool = False


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpointing and early stopping."""

    output_dir: str = "outputs/run"
    epochs: int = 3
    batch_size: int = 32
    encoder_lr: float = 2e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.1
    warmup_steps: Optional[int] = None
    grad_accum_steps: int = 1
    max_grad_norm: Optional[float] = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 42
    log_every: int = 10
    log_with: Literal["auto", "tensorboard", "none"] = "auto"
    # Checkpoints (accelerator.save_state) go to output_dir/checkpoints/.
    save_checkpoints: bool = True
    save_every_steps: Optional[int] = None
    keep_checkpoints: Optional[int] = 2
    # A checkpoint directory, or "latest" for the newest one under output_dir/checkpoints.
    resume_from: Optional[str] = None
    # Stop the run (after checkpointing) once this many optimizer steps are done; the schedule is unchanged.
    stop_after_steps: Optional[int] = None
    early_stopping_patience: Optional[int] = None
    # "auto": macro_f1 / micro_f1 / mse / loss depending on the task.
    metric_for_best: str = "auto"
    metric_mode: Literal["auto", "max", "min"] = "auto"
    progress_bar: bool = True


@dataclass
class EvalConfig:
    """Evaluation settings."""

    batch_size: Optional[int] = None
    # Also train one single-modality model per modality (same settings) and record their test metrics.
    baselines: bool = False
    # Recall@K cut-offs for retrieval tasks.
    recall_at: list[int] = field(default_factory=lambda: [1, 5, 10])


@dataclass
class ExperimentConfig:
    """A whole experiment: data, model, training and evaluation sections."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------------
# Parsing and validation


def parse_value(text: str) -> Any:
    """Parse one override value with YAML typing (``3`` -> int, ``null`` -> None, ``[a, b]`` -> list)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.epochs=3", ...]`` into a nested dict."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=3)")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
            node = child
        node[parts[-1]] = parse_value(value)
    return nested


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", repr(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp`, converting only where lossless (int -> float); raise naming `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{key}: invalid choice {value!r}; choose one of {', '.join(map(repr, choices))}{extra}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build_dataclass(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        return {str(k): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build_dataclass(cls: type[T], values: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            extra = f"; did you mean {(prefix + '.' if prefix else '') + hint[0]!r}?" if hint else ""
            where = f"section {prefix!r}" if prefix else "the top level"
            raise ConfigError(f"unknown config key {full!r} in {where}{extra} (valid: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def config_from_dict(values: dict, cls: type[T] = ExperimentConfig) -> T:
    """Build and validate a config dataclass tree from a nested dict."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(values).__name__}")
    return _build_dataclass(cls, values)


def config_to_dict(config: Any) -> dict:
    """The config as plain nested dicts/lists (what `save_config` writes)."""
    return dataclasses.asdict(config)


def load_config(
    path: Optional[str] = None, overrides: Optional[list[str]] = None, cls: type[T] = ExperimentConfig
) -> T:
    """Read a YAML config (or start from defaults when `path` is None) and apply ``key=value`` overrides."""
    values: dict = {}
    if path is not None:
        if not os.path.exists(path):
            raise ConfigError(f"config file {path!r} does not exist")
        with open(path, encoding="utf-8") as f:
            try:
                values = yaml.safe_load(f) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"config file {path!r} is not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping at the top level")
    if overrides:
        values = _deep_merge(values, parse_overrides(list(overrides)))
    return config_from_dict(values, cls)


def save_config(config: Any, path: str) -> None:
    """Write the resolved config as YAML (loadable again with `load_config`)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(config), f, sort_keys=False)


def parse_cli(
    argv: Optional[list[str]] = None, default_config: Optional[str] = None, cls: type[T] = ExperimentConfig
) -> T:
    """Recipe command line: ``[--config FILE] [key=value ...]``; without --config, `default_config` is used."""
    import argparse

    parser = argparse.ArgumentParser(description="Run a recipe from a YAML config with key=value overrides.")
    parser.add_argument("--config", default=None, help=f"YAML config (default: {default_config})")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 model.fusion=gated")
    args = parser.parse_args(argv)
    return load_config(args.config or default_config, args.overrides, cls)
