"""Every check of a built config, run once by `check_config` when the config is loaded.

In order: ranges (each numeric field's `Range`, declared as field metadata in `multimodal.config.schema`;
floats must also be finite), the registries (tasks, fusions, encoder kinds, demos), the experiment options
(streaming, few-shot, cross-validation, adversarial training, distillation), the fine-tuning methods,
the task's own rules (`Task.check_config`, `Task.metric_names`), rules across fields, and last the files the
run reads. Each raises `ConfigError` naming the key, before any data is read or a model is built. (What the
output folder holds, e.g. a checkpoint to resume, is checked when the run starts: `multimodal.tasks.run_folder`.)
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Optional

from encoders import EncoderError, parse_spec
from fusion import list_fusions
from multimodal.config.method import switches_chosen
from multimodal.config.ranges import check_ranges, numeric_fields, type_hints  # noqa: F401 (public here too)
from multimodal.config.schema import ADVERSARIAL_TARGETS, ConfigError, ExperimentConfig, short
from multimodal.data.demos import list_demos
from multimodal.registry import get_task, task_names

MIXABLE = ("image", "audio", "audio-mel")
"""Encoder kinds whose inputs mixup can mix."""
CLASSIFIERS = ("single_label", "multi_label")
"""Label types of the tasks that predict classes (what the probe, LP-FT and mixup need)."""


def _label_type(cfg: ExperimentConfig) -> Optional[str]:
    """The label type the configured task declares (a user subclass of a classifier keeps its parent's)."""
    try:
        return getattr(get_task(cfg.model.task), "label_type", None)
    except KeyError:
        return None


def _fused_classifier(cfg: ExperimentConfig) -> bool:
    """True when the task predicts classes through a fusion and head (what the probe replaces)."""
    try:
        uses_fusion = bool(getattr(get_task(cfg.model.task), "uses_fusion", False))
    except KeyError:
        return False
    return uses_fusion and _label_type(cfg) in CLASSIFIERS


# -- Registries ----------------------------------------------------------------------------------------------


def _did_you_mean(value: str, choices: list[str]) -> str:
    hint = difflib.get_close_matches(short(value), choices, n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _check_names(key: str, names: Any, encoders: dict) -> None:
    unknown = sorted(set(names) - set(encoders))
    if unknown:
        raise ConfigError(f"{key} names {unknown}, which are not in model.encoders ({sorted(encoders)})")


def _check_registered(key: str, what: str, value: str, names: list[str], hint: str) -> None:
    if value not in names:
        raise ConfigError(f"{key}: unknown {what} {short(value)}{_did_you_mean(value, names)}; registered: "
                          f"{', '.join(names)} ({hint})")


def _task_class(cfg: ExperimentConfig) -> Any:
    try:
        return get_task(cfg.model.task)
    except KeyError:
        raise ConfigError(
            f"model.task: unknown task {short(cfg.model.task)}{_did_you_mean(cfg.model.task, task_names())}; "
            f"registered: {', '.join(task_names())} (register your own with multimodal.register_task)"
        ) from None


def _check_model(cfg: ExperimentConfig, task_cls: Any) -> None:
    model, data = cfg.model, cfg.data
    if not model.encoders:
        raise ConfigError("model.encoders is empty: give at least one modality -> encoder spec")
    for modality, spec in model.encoders.items():
        try:
            parse_spec(spec)
        except EncoderError as err:
            raise ConfigError(f"model.encoders.{modality}: {err}") from None
    _check_names("model.encoder_kwargs", model.encoder_kwargs, model.encoders)
    if isinstance(model.freeze_encoders, list):
        _check_names("model.freeze_encoders", model.freeze_encoders, model.encoders)
    if isinstance(model.grad_checkpointing, list):
        _check_names("model.grad_checkpointing", model.grad_checkpointing, model.encoders)
    _check_names("data.required_modalities", data.required_modalities, model.encoders)
    if getattr(task_cls, "uses_fusion", True):
        _check_registered("model.fusion", "fusion", model.fusion, [f.name for f in list_fusions()],
                          "register your own with fusion.register_fusion")
    if data.demo:
        _check_registered("data.demo", "demo", data.demo, [d.name for d in list_demos()], "see multimodal.data.list_demos()")


# -- Experiment options: streaming, few-shot, cross-validation, adversarial training, distillation -----------


def _check_data(cfg: ExperimentConfig) -> None:
    data = cfg.data
    if data.webdataset and data.stream_files:
        raise ConfigError("data.webdataset and data.stream_files are both set: stream from one of them")
    if (data.webdataset or data.stream_files) and cfg.model.task == "retrieval":
        raise ConfigError("data.webdataset / data.stream_files: streaming is for classification tasks; retrieval "
                          "draws one caption per item, which needs the whole table (use data.train)")
    if data.val_fraction + data.test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction ({data.val_fraction}) + data.test_fraction ({data.test_fraction}) must be < 1: "
            "nothing would be left to train on"
        )
    if data.shots_per_class is not None and not data.label_column:
        raise ConfigError("data.shots_per_class samples rows per class: set data.label_column")
    if data.feature_cache_backend == "onnx" and data.feature_cache_precision != "fp32":
        raise ConfigError(f"data.feature_cache_backend: onnx runs the towers in fp32, but data.feature_cache_precision "
                          f"is {data.feature_cache_precision}: set it to fp32, or the backend to auto or torch")


def _check_folds(cfg: ExperimentConfig) -> None:
    data = cfg.data
    folds, column = data.folds, data.fold_column
    if folds is None and column is None:
        if data.only_folds is not None:
            raise ConfigError("data.only_folds picks folds of a cross-validation: set data.folds or data.fold_column")
        return
    if folds is not None and column is not None:
        raise ConfigError(f"give data.folds ({folds!r}) or data.fold_column ({column!r}), not both")
    if isinstance(folds, str) and folds != "groups":
        raise ConfigError(f"data.folds: expected a number of folds (>= 2) or 'groups', got {folds!r}")
    if isinstance(folds, int) and folds < 2:
        raise ConfigError(f"data.folds: cross-validation needs at least 2 folds, got {folds}")
    if folds == "groups" and not data.group_column:
        raise ConfigError("data.folds=groups leaves out one value of data.group_column per fold: set data.group_column "
                          "(e.g. the speaker column)")
    for key in ("validation", "test"):
        if getattr(data, key):
            raise ConfigError(f"cross-validation pools one table into folds; data.{key} ({getattr(data, key)!r}) names a "
                              "separate manifest: put every row in data.train")
    if data.split_column:
        raise ConfigError(f"cross-validation makes its own splits; data.split_column ({data.split_column!r}) would be "
                          "ignored: set it to null")
    only = data.only_folds
    if only is not None:
        if not only or len(set(only)) != len(only):
            raise ConfigError(f"data.only_folds: give distinct fold positions (from 0), or null for every fold; got {only}")
        if isinstance(folds, int) and max(only) >= folds:
            raise ConfigError(f"data.only_folds: {max(only)} is not a fold of data.folds={folds} (positions 0 to "
                              f"{folds - 1})")


def _check_adversarial(cfg: ExperimentConfig) -> None:
    adv = cfg.train.adversarial
    if adv is None:
        return
    if cfg.train.distill is not None:
        raise ConfigError("train.adversarial and train.distill cannot be combined: the adversarial step replaces the "
                          "training loss that distillation would also replace; set one of them to null")
    if cfg.train.linear_probe:
        raise ConfigError("train.adversarial needs a trained head: train.linear_probe fits a logistic regression on "
                          "fixed features, with no training step to attack")
    if not adv.on:
        raise ConfigError("train.adversarial.on is empty: list what to perturb (image, audio, text_embeddings)")
    for i, target in enumerate(adv.on):
        if target not in ADVERSARIAL_TARGETS:
            raise ConfigError(f"train.adversarial.on[{i}]: unknown target {target!r}; choose from "
                              f"{sorted(ADVERSARIAL_TARGETS)}")
        if ADVERSARIAL_TARGETS[target] not in cfg.model.encoders:
            raise ConfigError(f"train.adversarial.on[{i}]: {target!r} perturbs the {ADVERSARIAL_TARGETS[target]} "
                              f"modality, which is not in model.encoders ({sorted(cfg.model.encoders)})")
    if isinstance(adv.epsilon, dict):
        for target in adv.epsilon:
            if target not in adv.on:
                raise ConfigError(f"train.adversarial.epsilon.{target}: {target!r} is not in train.adversarial.on "
                                  f"({adv.on})")
        missing = [t for t in adv.on if t not in adv.epsilon]
        if missing:
            raise ConfigError(f"train.adversarial.epsilon gives no radius for {missing}")


def _check_gradient_cache(cfg: ExperimentConfig) -> None:
    train = cfg.train
    if not train.gradient_cache:
        return
    if not getattr(_task_class(cfg), "contrastive", False):
        raise ConfigError(f"train.gradient_cache: model.task={cfg.model.task!r} scores each row on its own, so its "
                          "batch splits into train.grad_accum_steps exactly; gradient caching is for contrastive "
                          "tasks (retrieval), whose loss couples the rows of a batch")
    for key, value in (("train.adversarial", train.adversarial), ("train.distill", train.distill)):
        if value is not None:
            raise ConfigError(f"train.gradient_cache and {key} cannot be combined: both replace the training step's "
                              "loss; turn one off")


def check_experiment_options(cfg: ExperimentConfig) -> None:
    """Raise `ConfigError` for bad streaming, few-shot, cross-validation, adversarial, distillation or gradient
    caching settings."""
    _check_data(cfg)
    _check_folds(cfg)
    _check_adversarial(cfg)
    _check_gradient_cache(cfg)
    if cfg.train.distill is not None and not cfg.train.distill.teacher:
        raise ConfigError("train.distill.teacher: give the teacher's model folder")


# -- Fine-tuning methods -------------------------------------------------------------------------------------


def _kind(spec: str) -> str:
    return str(spec).split(":", 1)[0]


def _check_adapters(cfg: ExperimentConfig) -> None:
    model, encoders = cfg.model, cfg.model.encoders
    for m in model.unlock_last_blocks:
        if m not in encoders:
            raise ConfigError(f"model.unlock_last_blocks names {m!r}, which is not in model.encoders ({sorted(encoders)})")
    p = model.peft
    if p is None:
        return
    _check_names("model.peft.modalities", p.modalities or [], encoders)
    extra = sorted(set(p.target_modules) - set(encoders)) if isinstance(p.target_modules, dict) else []
    if extra:
        raise ConfigError(f"model.peft.target_modules names {extra}, which are not in model.encoders")
    if model.unfreeze_after_epochs is not None:
        raise ConfigError("model.peft and model.unfreeze_after_epochs cannot be combined: LoRA keeps the base frozen")
    both = sorted(set(p.modalities or encoders) & set(model.unlock_last_blocks))
    if both:
        raise ConfigError(f"model.peft and model.unlock_last_blocks both name {both}: choose one per encoder")


def _check_probe(cfg: ExperimentConfig) -> None:
    model, train = cfg.model, cfg.train
    if train.linear_probe:
        if not _fused_classifier(cfg):
            raise ConfigError(f"train.linear_probe fits classifiers; model.task={model.task!r} is not supported")
        for key, value in (("model.peft", model.peft), ("model.unlock_last_blocks", model.unlock_last_blocks),
                           ("train.wise_ft_alphas", train.wise_ft_alphas), ("train.ema_decay", train.ema_decay)):
            if value:
                raise ConfigError(f"train.linear_probe keeps the encoders frozen and trains nothing: unset {key}")
    if train.probe_init:
        if train.linear_probe:
            raise ConfigError("train.probe_init fine-tunes from a fitted probe, train.linear_probe stops at the probe: "
                              "set one of them")
        if not _fused_classifier(cfg):
            raise ConfigError(f"train.probe_init starts a classifier from a linear probe; model.task={model.task!r} "
                              "is not supported")
        if model.fusion != "concat" or model.head_hidden_dim is not None:
            raise ConfigError("train.probe_init replaces the fusion and head with the probe's standardised "
                              "concatenation and linear head: leave model.fusion=concat and model.head_hidden_dim=null")
    if train.method == "auto" and not getattr(get_task(model.task), "uses_fusion", False):
        raise ConfigError(f"train.method=auto selects among a fused model's methods; model.task={model.task!r} has "
                          "no fusion and head: set train.method to head, lora, last_blocks or full")
    if train.method == "auto" and train.resume_from and not switches_chosen(cfg):
        raise ConfigError("train.resume_from: a train.method=auto run saves no checkpoints (its candidates are "
                          "compared, not resumed); set train.method to the method to resume, or resume_from=null")
    if train.probe_cs is not None and not train.probe_cs:
        raise ConfigError(f"train.probe_cs must be a non-empty list of positive numbers, got {train.probe_cs}")
    if train.refit_full and not train.linear_probe:
        raise ConfigError("train.refit_full applies to the linear probe (train.linear_probe=true)")
    if train.wise_ft_alphas is not None and not train.wise_ft_alphas:
        raise ConfigError(f"train.wise_ft_alphas must be a non-empty list in [0, 1], got {train.wise_ft_alphas}")


def _check_augment(cfg: ExperimentConfig) -> None:
    aug, encoders = cfg.data.augment, cfg.model.encoders
    if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
        if _label_type(cfg) not in CLASSIFIERS:
            raise ConfigError(f"data.augment.mixup_alpha / cutmix_alpha mix class labels; model.task={cfg.model.task!r}")
        for m, spec in encoders.items():
            if _kind(spec) not in MIXABLE:
                raise ConfigError(f"data.augment.mixup_alpha / cutmix_alpha: the {m} encoder ({spec}) cannot be mixed; "
                                  "only image and audio inputs can")
            if aug.cutmix_alpha > 0 and _kind(spec) != "image":
                raise ConfigError(f"data.augment.cutmix_alpha: cutmix cuts images; the {m} encoder is {spec}")
    if (aug.spec_freq_masks or aug.spec_time_masks) and "audio" in encoders and _kind(encoders["audio"]) != "audio-mel":
        raise ConfigError("data.augment.spec_freq_masks / spec_time_masks need an audio-mel encoder; Hugging Face "
                          "audio models mask in their own config (e.g. wav2vec2 mask_time_prob)")
    if aug.image_auto_augment and not (aug.image_auto_augment in ("randaugment", "trivialaugment")
                                       or aug.image_auto_augment.startswith(("rand", "augmix", "original", "v0"))):
        raise ConfigError(f"data.augment.image_auto_augment: {aug.image_auto_augment!r} is not 'randaugment', "
                          "'trivialaugment' or a timm auto-augment string such as 'rand-m9-mstd0.5-inc1'")


def check_finetune(cfg: ExperimentConfig) -> None:
    """Raise `ConfigError` naming the key for settings the fine-tuning methods cannot run with."""
    _check_adapters(cfg)
    _check_probe(cfg)
    _check_augment(cfg)


# -- Across fields, and the files a run reads ----------------------------------------------------------------


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
    if _label_type(cfg) == "multi_label" and not data.multi_label_separator:
        raise ConfigError("data.multi_label_separator is empty: multi-label cells need a separator (default '|')")
    templates = rcfg.templates
    if templates is not None:
        if not templates:
            raise ConfigError("retrieval.templates is an empty list: give templates with {} or null for the defaults")
        is_file = len(templates) == 1 and _exists(templates[0], "file")
        for t in [] if is_file else templates:
            if "{}" not in t:
                raise ConfigError(f"retrieval.templates: {short(t)} has no '{{}}' placeholder for the class name")


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


def check_config(cfg: ExperimentConfig) -> None:
    """Raise `ConfigError` naming the key for anything that would fail later (see module docstring)."""
    check_ranges(cfg)  # numbers first: every later check may rely on them
    task_cls = _task_class(cfg)
    _check_model(cfg, task_cls)
    check_experiment_options(cfg)
    if cfg.train.epochs == 0 and not task_cls.allows_zero_epochs:
        raise ConfigError(f"train.epochs: 0 is out of range; allowed: >= 1 (0, evaluating the model untrained, only "
                          f"for tasks that allow it, e.g. prompt_classifier; model.task is {cfg.model.task!r})")
    task_cls.check_config(cfg)
    check_finetune(cfg)
    metric = cfg.train.metric_for_best
    if metric != "auto":
        names = task_cls.metric_names(cfg)
        if names is not None and metric not in names:
            raise ConfigError(
                f"train.metric_for_best: {short(metric)} is not a validation metric of task {cfg.model.task!r}"
                f"{_did_you_mean(metric, sorted(names))}; choose one of {sorted(names)}"
            )
    check_cross_fields(cfg)
    check_paths(cfg)  # last: the file system is consulted only for an otherwise valid config
