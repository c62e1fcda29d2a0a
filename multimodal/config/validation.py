"""Range and cross-field checks of a built config, run by `check_config` before any data is read.

Every numeric field has an allowed range: the table `RANGES` below (dotted key -> `Range`), or, for fields
that other experiments add, ``dataclasses.field(metadata={"range": Range(...)})`` on the field itself.
Floating-point values must also be finite. A value out of range raises `ConfigError` naming the key, the
value and the allowed range. The cross-field checks (`check_paths`, `check_cross_fields`) cover what would
otherwise fail only once data is read or training has started: files that do not exist, duplicate label
names, prompt templates without ``{}``. (What the output folder holds, e.g. a checkpoint to resume, is
checked when the run starts: `multimodal.tasks.outputs`.)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass
from typing import Any, Optional

from multimodal.config.schema import ConfigError

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist = 80, 80, 6
SEED_MAX = 2**32 - 1  # numpy's global seed limit (accelerate's set_seed seeds numpy too)
WIDTH_MAX = 2**16  # layer widths beyond this would not fit in memory anyway


def short(value: Any) -> str:
    """A bounded repr of a config value for error messages."""
    return _short.repr(value)


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field: ``low <= v <= high``, either end optional or exclusive."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # True: low itself is not allowed
    high_open: bool = False
    note: str = ""  # e.g. "null turns clipping off"

    def contains(self, value: float) -> bool:
        """Whether `value` lies in the range."""
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def describe(self) -> str:
        """The range as text: '>= 1', '> 0', 'in [0, 1)'."""
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            text = "any finite number"
        return f"{text} ({self.note})" if self.note else text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


POSITIVE = Range(1)  # integers >= 1
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, high_open=True)  # a probability that must leave something: [0, 1)
SEED = Range(0, SEED_MAX)
WIDTH = Range(1, WIDTH_MAX)

RANGES: dict[str, Range] = {
    # data
    "data.demo_size": Range(1, note="null: the demo's own size"),
    "data.shuffle_buffer": Range(1, note="records per process in the streaming shuffle buffer"),
    # data augmentation (fine-tuning)
    "data.augment.image_scale": Range(0, 1, low_open=True, note="RandomResizedCrop area fractions"),
    "data.augment.image_hflip": Range(0, 1, note="a probability"),
    "data.augment.image_color_jitter": NON_NEGATIVE,
    "data.augment.audio_gain_db": NON_NEGATIVE,
    "data.augment.audio_shift_seconds": NON_NEGATIVE,
    "data.augment.spec_freq_masks": NON_NEGATIVE,
    "data.augment.spec_freq_mask_width": Range(0, 1, note="a fraction of the mel bins"),
    "data.augment.spec_time_masks": NON_NEGATIVE,
    "data.augment.spec_time_mask_width": Range(0, 1, note="a fraction of the clip"),
    "data.augment.mixup_alpha": Range(0, note="0 turns mixup off"),
    "data.augment.cutmix_alpha": Range(0, note="0 turns cutmix off"),
    "data.augment.mix_prob": Range(0, 1, note="a probability"),
    "data.augment.label_smoothing": FRACTION,
    "data.val_fraction": FRACTION,
    "data.test_fraction": FRACTION,
    "data.split_seed": SEED,
    "data.num_workers": Range(0, 256, note="0 loads in the main process"),
    "data.max_image_pixels": Range(1, note="null: 16,000,000"),
    "data.max_image_aspect": Range(1, note="null: 32"),
    "data.max_audio_seconds": Range(0, low_open=True, note="null: 600"),
    "data.max_audio_rate": Range(1, 384_000, note="null: 192,000"),
    "data.max_text_chars": Range(1, note="null: 100,000"),
    "data.max_train_samples": Range(1, note="null: all rows"),
    "data.shots_per_class": Range(1, note="null: every training row"),
    "data.shots_seed": SEED,
    # model
    "model.fusion_dim": WIDTH,
    "model.head_hidden_dim": Range(1, WIDTH_MAX, note="null: a linear head"),
    "model.head_dropout": FRACTION,
    "model.modality_dropout": FRACTION,
    "model.unfreeze_after_epochs": NON_NEGATIVE,
    # train
    "train.dist_timeout_s": Range(0, low_open=True, note="null: torch's default"),
    "train.probe_cs": Range(0, low_open=True, note="inverse L2 strengths of the linear probe"),
    "train.layer_decay": Range(0, 1, low_open=True, note="1: no decay"),
    "train.ema_decay": Range(0, 1, low_open=True, high_open=True),
    "train.wise_ft_alphas": Range(0, 1, note="0: the starting weights, 1: the fine-tuned ones"),
    "train.epochs": Range(0, note="0 only for tasks that evaluate an untrained model (prompt_classifier)"),
    "train.batch_size": POSITIVE,
    "train.encoder_lr": Range(0, note="0 leaves the trainable encoders unchanged"),
    "train.head_lr": Range(0, low_open=True),
    "train.weight_decay": NON_NEGATIVE,
    "train.warmup_ratio": Range(0, 1),
    "train.warmup_steps": Range(0, note="null: warmup_ratio of the steps"),
    "train.grad_accum_steps": POSITIVE,
    "train.max_grad_norm": Range(0, low_open=True, note="null turns clipping off"),
    "train.seed": SEED,
    "train.log_every": POSITIVE,
    "train.save_every_steps": Range(1, note="null: checkpoints at epoch ends only"),
    "train.keep_checkpoints": Range(1, note="null keeps all"),
    "train.stop_after_steps": POSITIVE,
    "train.early_stopping_patience": Range(1, note="null: no early stopping"),
    # eval
    "eval.batch_size": Range(1, note="null: train.batch_size"),
    "eval.recall_at": POSITIVE,
    "eval.num_examples": NON_NEGATIVE,
    # retrieval
    "retrieval.projection_hidden_dim": Range(1, WIDTH_MAX, note="null: the embedding width"),
}


def _numeric_kind(tp: Any) -> Optional[type]:
    """int or float when a field's type is (an optional, or a list of) that number, else None."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = {_numeric_kind(a) for a in typing.get_args(tp) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return _numeric_kind(args[0]) if args else None
    return tp if tp in (int, float) else None


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """`typing.get_type_hints` of a config dataclass, resolved once per class."""
    return typing.get_type_hints(cls)


@functools.cache
def numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, type, Optional[Range]]]:
    """(dotted key, int or float, declared range or None) for every numeric field of a config dataclass tree."""
    out: list[tuple[str, type, Optional[Range]]] = []
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(numeric_fields(tp, key + "."))
            continue
        kind = _numeric_kind(tp)
        if kind is not None:
            out.append((key, kind, f.metadata.get("range") or RANGES.get(key)))
    return out


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Raise `ConfigError` for a numeric value that is not finite or outside its field's range.

    `cfg` is a whole config or one section of it with its dotted `prefix` (``check_ranges(cfg.train, "train.")``).
    """
    for key, _kind, allowed in numeric_fields(type(cfg), prefix):
        value = _get(cfg, key[len(prefix):])
        values = value if isinstance(value, (list, tuple)) else [value]
        for i, v in enumerate(values):
            if v is None:
                continue
            where = f"{key}[{i}]" if isinstance(value, (list, tuple)) else key
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{where}: {v} is not a finite number"
                                  + (f"; allowed: {allowed.describe()}" if allowed else ""))
            if allowed is not None and not allowed.contains(v):
                raise ConfigError(f"{where}: {short(v)} is out of range; allowed: {allowed.describe()}")


def _exists(path: str, kind: str = "any") -> bool:
    try:
        expanded = os.path.expanduser(path)
        return os.path.isdir(expanded) if kind == "dir" else (
            os.path.isfile(expanded) if kind == "file" else os.path.exists(expanded))
    except (ValueError, OSError):  # an embedded NUL byte, a name too long for the file system
        return False


def check_paths(cfg: Any) -> None:
    """The files and folders a run reads must exist (relative paths are taken from the working directory)."""
    data, train = cfg.data, cfg.train
    if not data.demo:
        if data.hf_dataset is not None:
            if not _exists(data.hf_dataset, "dir"):
                raise ConfigError(f"data.hf_dataset: folder {short(data.hf_dataset)} does not exist "
                                  "(a folder written by datasets' save_to_disk)")
        else:
            for name in ("train", "validation", "test"):
                path = getattr(data, name)
                if path is not None and not _exists(path, "file"):
                    where = "is a folder, not a manifest file" if _exists(path, "dir") else "does not exist"
                    raise ConfigError(f"data.{name}: manifest {short(path)} {where}")
    if not train.output_dir or not train.output_dir.strip():
        raise ConfigError("train.output_dir is empty: give the folder the run writes to")
    if _exists(train.output_dir) and not _exists(train.output_dir, "dir"):
        raise ConfigError(f"train.output_dir: {short(train.output_dir)} exists and is not a folder")
    cache = data.feature_cache
    if cache not in (None, "auto") and _exists(cache) and not _exists(cache, "dir"):
        raise ConfigError(f"data.feature_cache: {short(cache)} exists and is not a folder")


def check_cross_fields(cfg: Any) -> None:
    """Rules that involve more than one value, or a value's content."""
    data, rcfg = cfg.data, cfg.retrieval
    if data.labels is not None:
        if not data.labels:
            raise ConfigError("data.labels is an empty list: give the label names, or null to read them from the data")
        seen: set[str] = set()
        for name in data.labels:
            if str(name) in seen:
                raise ConfigError(f"data.labels: {short(name)} appears twice; label names must be unique")
            seen.add(str(name))
    if cfg.model.task == "multi_label" and not data.multi_label_separator:
        raise ConfigError("data.multi_label_separator is empty: multi-label cells need a separator (default '|')")
    templates = rcfg.templates
    if templates is not None:
        if not templates:
            raise ConfigError("retrieval.templates is an empty list: give templates with {} or null for the defaults")
        is_file = len(templates) == 1 and _exists(templates[0], "file")
        for t in [] if is_file else templates:
            if "{}" not in t:
                raise ConfigError(f"retrieval.templates: {short(t)} has no '{{}}' placeholder for the class name")

