"""Config checks against the registries (tasks, fusions, encoder kinds, demos), ranges and across fields.

They run when a config is loaded, before any data is read or a model is built, and raise `ConfigError`
naming the key. Task-specific rules come from the task class (`Task.check_config`, `Task.metric_names`).
"""

from __future__ import annotations

import difflib
from typing import Any

from encoders import EncoderError, parse_spec
from fusion import list_fusions
from multimodal.config.experiments import check_experiment_options
from multimodal.config.finetune_checks import check_finetune
from multimodal.config.merge import deep_merge
from multimodal.config.schema import ConfigError, ExperimentConfig, ModelConfig
from multimodal.config.validation import check_cross_fields, check_paths, check_ranges, short
from multimodal.data.demos import get_demo, list_demos
from multimodal.registry import get_task, task_names


def layered_defaults(values: dict) -> dict:
    """The defaults that the task and the demo selected in `values` set for themselves (demo over task)."""
    model = values.get("model") if isinstance(values.get("model"), dict) else {}
    data = values.get("data") if isinstance(values.get("data"), dict) else {}
    out: dict = {}
    task = model.get("task", ModelConfig.task)
    try:
        out = deep_merge(out, dict(getattr(get_task(str(task)), "config_defaults", {}) or {}))
    except KeyError:
        pass  # check_config reports the unknown task
    demo = data.get("demo")
    if demo:
        try:
            out = deep_merge(out, dict(get_demo(str(demo)).config_defaults))
        except KeyError:
            pass
    # Encoder options of the defaults apply only to the modalities the experiment has.
    encoders = model.get("encoders") if isinstance(model.get("encoders"), dict) else ModelConfig().encoders
    kwargs = (out.get("model") or {}).get("encoder_kwargs")
    if isinstance(kwargs, dict):
        out["model"] = {**out["model"], "encoder_kwargs": {m: v for m, v in kwargs.items() if m in encoders}}
    return out


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


def check_config(cfg: ExperimentConfig) -> None:
    """Raise `ConfigError` naming the key for anything that would fail later (see module docstring)."""
    model, data = cfg.model, cfg.data
    check_ranges(cfg)  # numbers first: every later check may rely on them
    try:
        task_cls = get_task(model.task)
    except KeyError:
        raise ConfigError(
            f"model.task: unknown task {short(model.task)}{_did_you_mean(model.task, task_names())}; "
            f"registered: {', '.join(task_names())} (register your own with multimodal.register_task)"
        ) from None
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
    _check_names("data.required_modalities", data.required_modalities, model.encoders)
    if getattr(task_cls, "uses_fusion", True):
        _check_registered("model.fusion", "fusion", model.fusion, [f.name for f in list_fusions()],
                          "register your own with fusion.register_fusion")
    if data.demo:
        _check_registered("data.demo", "demo", data.demo, [d.name for d in list_demos()], "see multimodal.data.list_demos()")
    if data.webdataset and data.stream_files:
        raise ConfigError("data.webdataset and data.stream_files are both set: stream from one of them")
    if (data.webdataset or data.stream_files) and model.task == "retrieval":
        raise ConfigError("data.webdataset / data.stream_files: streaming is for classification tasks; retrieval "
                          "draws one caption per item, which needs the whole table (use data.train)")
    if (data.webdataset or data.stream_files) and data.shuffle_buffer < 1:
        raise ConfigError(f"data.shuffle_buffer must be >= 1, got {data.shuffle_buffer}")
    if data.val_fraction + data.test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction ({data.val_fraction}) + data.test_fraction ({data.test_fraction}) must be < 1: "
            "nothing would be left to train on"
        )
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
                f"train.metric_for_best: {short(metric)} is not a validation metric of task {model.task!r}"
                f"{_did_you_mean(metric, sorted(names))}; choose one of {sorted(names)}"
            )
    check_cross_fields(cfg)
    check_paths(cfg)  # last: the file system is consulted only for an otherwise valid config
