"""Cross-validation in one run: ``data.folds: K``, ``data.folds: groups`` or ``data.fold_column``.

The data is read and checked once, as one pooled table (a demo's own split column is ignored). Each fold in
turn is the test split; its validation split is carved from the other folds (`multimodal.data.splits.fold_splits`:
``data.val_fraction``, stratified by class, ``data.group_column`` groups kept whole, at least one row or group),
and ``data.shots_per_class`` applies to its training rows. ``data.only_folds`` runs some of the folds. Every fold
is an ordinary run of the runner, written to ``<output_dir>/folds/<fold>/`` (model, splits, metrics.json,
report); ``<output_dir>/metrics.json`` holds the per-fold numbers and, for every number in a fold's metrics
(nested ones such as per-class or per-direction scores flattened to ``a/b/c``), the mean and the sample standard
deviation (ddof=1) over the folds that ran. Values that are not numbers (lists, text) stay in the per-fold
entries and are listed under ``not_aggregated``.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from multimodal.config.loading import save_config
from multimodal.config.schema import ConfigError, ExperimentConfig
from multimodal.data.dataset import DataError
from multimodal.data.demos import make_demo
from multimodal.data.splits import fold_splits, fold_units
from multimodal.evaluation.report import write_report
from multimodal.files import write_json
from multimodal.registry import get_task
from multimodal.training.accelerator import process_state

RunFn = Callable[..., dict[str, Any]]


def pooled_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` reading all of its data as one training table (no held-out splits, no shots, no folds)."""
    pooled = copy.deepcopy(cfg)
    data = pooled.data
    if data.demo:
        data.train = make_demo(data.demo, size=data.demo_size, root=data.demo_dir, seed=data.split_seed)
        data.demo = None
    data.val_fraction, data.test_fraction = 0.0, 0.0
    data.shots_per_class, data.folds, data.fold_column, data.split_column = None, None, None, None
    data.only_folds = None
    return pooled


def _leaves(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every value of a fold's metrics, nested dicts flattened with '/' (``zero_shot/image/accuracy``)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a fold's metrics, at any depth, flattened with '/'."""
    return {k: float(v) for k, v in _leaves(metrics).items() if _is_number(v)}


def summarize_folds(per_fold: list[dict[str, Any]], split: str) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation over folds of every number in the metrics of `split` (per leaf)."""
    values: dict[str, list[float]] = {}
    for fold in per_fold:
        for key, value in _scalars(fold.get(split) or {}).items():
            values.setdefault(key, []).append(value)
    mean = {k: statistics.fmean(v) for k, v in values.items()}
    std = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()}
    return mean, std


def not_aggregated(per_fold: list[dict[str, Any]], split: str) -> list[str]:
    """Keys of `split`'s metrics that hold no number (lists, text): kept per fold, not averaged."""
    return sorted({k for fold in per_fold for k, v in _leaves(fold.get(split) or {}).items() if not _is_number(v)})


def chosen_folds(folds: list[tuple[str, list[int]]], only: Any) -> list[int]:
    """Positions of the folds to run: every one, or those ``data.only_folds`` lists (checked against `folds`)."""
    if only is None:
        return list(range(len(folds)))
    beyond = sorted(i for i in only if i >= len(folds))
    if beyond:
        raise ConfigError(f"data.only_folds: {beyond} are not folds of this data, which has {len(folds)} "
                          f"(positions 0 to {len(folds) - 1}: {', '.join(name for name, _ in folds)})")
    return sorted(only)


def _summary(how: str, folds: list[tuple[str, list[int]]], ran: list[int], per_fold: list[dict]) -> dict[str, Any]:
    """The ``cross_validation`` entry of metrics.json: scheme, folds run, per-fold numbers, mean and std per leaf."""
    summary: dict[str, Any] = {"scheme": how, "num_folds": len(folds), "folds_run": [folds[i][0] for i in ran],
                               "only_folds": ran if len(ran) < len(folds) else None,
                               "std": "sample standard deviation (ddof=1)"}
    for split in ("test", "validation"):
        summary[f"{split}_mean"], summary[f"{split}_std"] = summarize_folds(per_fold, split)
        summary[f"{split}_not_aggregated"] = not_aggregated(per_fold, split)
    kept = [f["method_selection"]["chosen"] for f in per_fold if f.get("method_selection")]
    if kept:
        summary["methods_kept"] = {m: kept.count(m) for m in dict.fromkeys(kept)}
    summary["folds"] = per_fold
    return summary


def run_crossval(cfg: ExperimentConfig, run_one: RunFn, dataset: Any = None) -> dict[str, Any]:
    """Run every fold (or ``data.only_folds``) with `run_one(fold_cfg, splits=...)` (the runner's `run`) and
    write the summary."""
    state = process_state()
    t0 = time.time()
    out = cfg.train.output_dir
    if state.is_main_process:
        os.makedirs(out, exist_ok=True)
        save_config(cfg, os.path.join(out, "config.yaml"))
    pooled = pooled_config(cfg)
    task = get_task(cfg.model.task)(pooled)
    pool = task.build_splits(dataset, progress=state.is_main_process)
    if pool.validation is not None or pool.test is not None:
        raise DataError("cross-validation pools one table, but the data names several splits (a DatasetDict or "
                        "separate manifests): give one table")
    group_column = cfg.data.group_column or task.group_column()
    folds, how = fold_units(pool.train, cfg.data.folds, cfg.data.fold_column, group_column, cfg.data.split_seed)
    ran = chosen_folds(folds, cfg.data.only_folds)
    state.print(f"cross-validation: {how}, {len(folds)} folds over {len(pool.train)} rows"
                + (f"; running {len(ran)} of them (data.only_folds)" if len(ran) < len(folds) else ""))
    per_fold = []
    for name, test in (folds[i] for i in ran):
        state.print(f"cross-validation: {name} ({len(test)} test rows)")
        fold_cfg = copy.deepcopy(pooled)
        fold_cfg.train.output_dir = os.path.join(out, "folds", name)
        metrics = run_one(fold_cfg, splits=fold_splits(pool, test, cfg.data, group_column))
        per_fold.append({"fold": name, **{k: metrics.get(k) for k in ("split_sizes", "best_epoch", "epochs_run",
                                                                      "train_time_s", "validation", "test")}})
        if metrics.get("method_selection"):  # train.method=auto: what each fold kept, and the candidates' scores
            per_fold[-1]["method_selection"] = metrics["method_selection"]
    summary = _summary(how, folds, ran, per_fold)
    metrics = {"task": cfg.model.task, "modalities": sorted(cfg.model.encoders), "encoders": dict(cfg.model.encoders),
               "labels": pool.vocab.names if pool.vocab is not None else None, "cross_validation": summary,
               "skipped": pool.skip_report(), "wall_time_s": round(time.time() - t0, 2)}
    if state.is_main_process:
        write_json(os.path.join(out, "metrics.json"), metrics)
        _write_summary(out, summary, cfg.model.task)
    state.wait_for_everyone()
    return metrics


def _write_summary(out: str, summary: dict[str, Any], task: str) -> str:
    """report.md: mean +/- std per test metric, and one line per fold."""
    mean, std = summary["test_mean"], summary["test_std"]
    table: dict[str, float] = {}
    for k in sorted(mean):
        table[f"{k} mean"], table[f"{k} std"] = mean[k], std[k]
    ran = "" if summary["only_folds"] is None else f", of which {', '.join(summary['folds_run'])} ran (data.only_folds)"
    notes = [f"Cross-validation ({summary['scheme']}), {summary['num_folds']} folds{ran}; std is the sample standard "
             "deviation over the folds that ran. Each fold's own report is in folds/<fold>/."]
    for fold in summary["folds"]:
        scalars = _scalars(fold.get("test") or {})
        shown = ", ".join(f"{k}={v:.4f}" for k, v in scalars.items() if "/" not in k)
        method = f"; method kept: {fold['method_selection']['chosen']}" if fold.get("method_selection") else ""
        notes.append(f"{fold['fold']}: {fold.get('split_sizes')}; test {shown}{method}")
    return write_report(out, table, title=f"{task}: {summary['num_folds']}-fold cross-validation", notes=notes)
