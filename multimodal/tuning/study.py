"""Hyper-parameter search on Optuna over the experiment config: every trial is one `multimodal.run`.

A trial takes the base config (YAML + overrides), sets the sampled keys, and runs the ordinary runner into
``<output>/trials/trial-NNNN/`` (without checkpoints or baselines). Its objective is the validation value
of the task's model-selection metric (``train.metric_for_best``, or the task's own) of the best epoch; the
direction is the task's for that metric. The pruner is fed the same metric after every epoch through a
`Trainer` callback and stops hopeless trials (Optuna's ``TrialPruned``).

The study lives in an Optuna storage (default ``sqlite:///<output>/study.db``): running the command again
resumes it, and several machines given one RDB URL (``postgresql://...``) and study name share it, Optuna's
own distributed mode. ``trials`` is the total over the study (complete, pruned and failed trials count).
A trial that fails with a user error (a config, data or encoder error, a NaN loss) is recorded as failed,
its error kept, and the search goes on. Outputs: ``trials.csv``, ``best_config.yaml`` (the base config with
the best trial's values, runnable as is), ``study_summary.json`` and PNG plots.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from encoders import EncoderError
from multimodal.config.loading import config_from_dict, save_config
from multimodal.config.merge import deep_merge
from multimodal.config.schema import ConfigError, ExperimentConfig
from multimodal.evaluation.metrics import improves
from multimodal.files import write_json
from multimodal.registry import get_task
from multimodal.tasks.runner import run
from multimodal.training.integrity import NonFiniteLossError
from multimodal.tuning.space import Param, nested

USER_ERRORS = (ValueError, EncoderError, NonFiniteLossError, torch.OutOfMemoryError)
"""Failures of a trial that come from its settings or data (ConfigError and DataError are ValueErrors)."""
PRUNERS = ("median", "hyperband", "successive_halving", "none")


@dataclass
class SearchSettings:
    """What `tune` needs besides the config and the space."""

    output: str
    trials: int
    storage: Optional[str] = None
    study_name: Optional[str] = None
    timeout: Optional[float] = None
    pruner: Any = "median"  # a name in PRUNERS, or an Optuna pruner object
    startup_trials: int = 5
    seed: Optional[int] = 0
    keep_models: bool = False
    log: Callable[[str], None] = print
    extra_callbacks: list = field(default_factory=list)
    enqueue: list = field(default_factory=list)  # parameter dicts tried first in a new study (known good configs)


def objective_metric(cfg: ExperimentConfig) -> tuple[str, str]:
    """The validation metric trials are scored by and Optuna's direction for it."""
    task = get_task(cfg.model.task)(cfg)
    metric = cfg.train.metric_for_best if cfg.train.metric_for_best != "auto" else task.default_metric()
    mode = cfg.train.metric_mode if cfg.train.metric_mode != "auto" else task.metric_mode(metric)
    return metric, "maximize" if mode == "max" else "minimize"


class PruningCallback:
    """Trainer callback: report the epoch's validation metric to the trial; raise `TrialPruned` when told."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def __call__(self, trainer: Any, record: dict) -> None:
        import optuna

        value = record.get(self.metric)
        if value is None:
            return
        self.trial.report(float(value), step=int(record["epoch"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric}={value:.4f} at epoch {record['epoch']}")


def make_pruner(name: str, startup: int, epochs: int) -> Any:
    """An Optuna pruner by name (or `name` itself when it is a pruner object); its steps are epochs."""
    import optuna

    if not isinstance(name, str):
        return name
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner: unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def make_storage(url: str) -> Any:
    """An RDB storage with heartbeats: a trial whose process died is marked failed (and retried once)."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, plots
    try:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=60, grace_period=180,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as err:  # noqa: BLE001 - a bad URL, a missing driver, an unreachable server
        raise ConfigError(f"--storage {url!r}: {type(err).__name__}: {err}") from None


def trial_config(base: dict, params: dict[str, Any], output_dir: str) -> ExperimentConfig:
    """The config of one trial: the base values, the sampled ones, its own output folder, no checkpoints/baselines."""
    values = deep_merge(base, nested(params))
    values = deep_merge(values, {"train": {"output_dir": output_dir, "save_checkpoints": False, "resume_from": None},
                                 "eval": {"baselines": False}})
    return config_from_dict(values)


def _headline(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, float) and "/" not in k}


def make_objective(base: dict, space: list[Param], metric: str, settings: SearchSettings) -> Callable[[Any], float]:
    """The Optuna objective: sample, run, return the validation metric (user errors recorded, then re-raised)."""

    def objective(trial: Any) -> float:
        params = {p.key: p.suggest(trial) for p in space}
        out = os.path.join(settings.output, "trials", f"trial-{trial.number:04d}")
        trial.set_user_attr("output_dir", os.path.abspath(out))
        try:
            cfg = trial_config(base, params, out)
            metrics = run(cfg, callbacks=[PruningCallback(trial, metric)])
        except USER_ERRORS as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            raise
        finally:
            if not settings.keep_models:
                shutil.rmtree(os.path.join(out, "model"), ignore_errors=True)
        validation = metrics.get("validation") or {}
        if metric not in validation:
            raise ConfigError(f"trial {trial.number}: no validation {metric!r} (the search needs a validation split)")
        for key in ("epochs_run", "best_epoch", "train_time_s"):
            trial.set_user_attr(key, metrics.get(key))
        trial.set_user_attr("validation_loss", validation.get("loss"))  # breaks ties between trials
        trial.set_user_attr("test", _headline(metrics.get("test")))
        return float(validation[metric])

    return objective


def _study_name(config_path: Optional[str]) -> str:
    stem = os.path.splitext(os.path.basename(config_path or "study"))[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem) or "study"


def tune(base: dict, space: list[Param], settings: SearchSettings, config_path: Optional[str] = None) -> dict:
    """Create or resume the study, run trials until the study holds `settings.trials`, write the outputs."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = config_from_dict(copy.deepcopy(base))
    metric, direction = objective_metric(cfg)
    os.makedirs(settings.output, exist_ok=True)
    url = settings.storage or f"sqlite:///{os.path.abspath(os.path.join(settings.output, 'study.db'))}"
    name = settings.study_name or _study_name(config_path)
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=settings.startup_trials)
    try:
        study = optuna.create_study(storage=make_storage(url), study_name=name, direction=direction, sampler=sampler,
                                    pruner=make_pruner(settings.pruner, settings.startup_trials, cfg.train.epochs),
                                    load_if_exists=True)
    except ValueError as err:  # e.g. an existing study with the other direction
        raise ConfigError(f"study {name!r} in {url}: {err}") from None
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    done = len(study.get_trials(deepcopy=False, states=counted))
    if not study.trials:
        for params in settings.enqueue:
            study.enqueue_trial(params)
    settings.log(f"study {name!r} ({url}): {done} trials so far; objective {direction} validation {metric}")
    start, cpu = time.time(), time.process_time()

    def report(study: Any, trial: Any) -> None:
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in trial.params.items()}
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            step = max(trial.intermediate_values)
            value = f"{trial.intermediate_values[step]:.4f} at epoch {step}"
        error = f" ({trial.user_attrs['error']})" if "error" in trial.user_attrs else ""
        settings.log(f"trial {trial.number} {trial.state.name.lower()}: {metric}={value} {shown}{error}")
        write_trials(study, settings.output)

    if done < settings.trials:
        study.optimize(make_objective(base, space, metric, settings), timeout=settings.timeout, catch=USER_ERRORS,
                       callbacks=[optuna.study.MaxTrialsCallback(settings.trials, states=counted), report,
                                  *settings.extra_callbacks])
    return write_outputs(study, base, metric, direction, url, settings, time.time() - start, time.process_time() - cpu)


def write_trials(study: Any, output: str) -> str:
    """``trials.csv``: one row per trial (number, state, value, params, errors, test metrics, durations)."""
    path = os.path.join(output, "trials.csv")
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration",
                                          "datetime_start", "datetime_complete"))
    frame.to_csv(path, index=False)
    return path


def write_outputs(study: Any, base: dict, metric: str, direction: str, url: str, settings: SearchSettings,
                  wall_s: float, cpu_s: float) -> dict:
    """trials.csv, best_config.yaml, plots and study_summary.json; returns the summary."""
    from optuna.trial import TrialState

    out = settings.output
    write_trials(study, out)
    states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    summary: dict[str, Any] = {"study_name": study.study_name, "storage": url, "metric": f"validation {metric}",
                               "direction": direction, "trials": {k: v for k, v in states.items() if v},
                               "this_process": {"wall_s": round(wall_s, 2), "cpu_s": round(cpu_s, 2)}}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    warning = tie_warning(complete, metric)
    if warning:
        settings.log(f"warning: {warning}")
        summary["warning"] = warning
    if complete:
        best = best_trial(complete, direction)
        best_cfg = config_from_dict(deep_merge(base, nested(best.params)))
        best_cfg.train.output_dir = os.path.join(out, "best")
        save_config(best_cfg, os.path.join(out, "best_config.yaml"))
        summary["best_trial"] = {"number": best.number, "value": best.value, "params": best.params,
                                 "test": best.user_attrs.get("test"), "output_dir": best.user_attrs.get("output_dir")}
    summary["plots"] = write_plots(study, out, skip={"param_importances": warning} if warning else None)
    write_json(os.path.join(out, "study_summary.json"), summary)
    return summary


def best_trial(trials: list[Any], direction: str) -> Any:
    """The best complete trial; among trials tied on the objective, the one with the lowest validation loss
    (the same rule as choosing an epoch, `multimodal.evaluation.metrics.improves`)."""
    mode = "max" if direction == "maximize" else "min"
    best = None
    for trial in trials:
        if best is None or improves(trial.value, best.value, mode, trial.user_attrs.get("validation_loss"),
                                    best.user_attrs.get("validation_loss")):
            best = trial
    return best


def tie_warning(trials: list[Any], metric: str) -> Optional[str]:
    """A warning when two or more complete trials all scored the same objective value (None otherwise):
    the search then learnt nothing about the parameters, and their importances mean nothing."""
    values = {t.value for t in trials}
    if len(trials) < 2 or len(values) != 1:
        return None
    return (f"all {len(trials)} complete trials scored the same validation {metric} ({values.pop():g}): the "
            f"search could not tell the settings apart, so parameter importances are meaningless and are not "
            f"drawn; the best config was chosen by the lowest validation loss. Use a larger validation split "
            f"(data.val_fraction), cross-validation (data.folds) or train.metric_for_best=loss")


def write_plots(study: Any, out: str, skip: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Optimization history, parameter importances and per-epoch values as PNGs (those that can be drawn);
    `skip` names plots not to draw, with the reason recorded instead."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written: dict[str, str] = {}
    for name, plot in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances),
                       ("intermediate_values", ovm.plot_intermediate_values)):
        if skip and name in skip:
            written[name] = f"not drawn: {skip[name]}"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" and empty-legend warnings
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few complete trials, one value, ...
            written[name] = f"not drawn: {err}"
            continue
        path = os.path.join(out, f"{name}.png")
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[name] = path
    return written
