"""Cross-validation in one run: ``data.folds: K``, ``data.folds: groups`` or ``data.fold_column``.

The data is read and checked once, as one pooled table (a demo's own split column is ignored). Each fold in
turn is the test split; its validation split is carved from the other folds with the one seeded split
function (``data.val_fraction``, stratified by class, ``data.group_column`` groups kept whole), and
``data.shots_per_class`` applies to its training rows. Every fold is an ordinary run of the runner, written
to ``<output_dir>/folds/<fold>/`` (model, splits, metrics.json, report); ``<output_dir>/metrics.json``
holds the per-fold numbers and, for every scalar metric, the mean and the sample standard deviation
(ddof=1) over folds.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from multimodal.config.loading import save_config
from multimodal.config.schema import ExperimentConfig
from multimodal.data.dataset import DataError
from multimodal.data.demos import make_demo
from multimodal.data.partition import assign_splits
from multimodal.data.splits import DataSplits
from multimodal.data.subsets import apply_shots, fold_units, subset, units_of
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
    return pooled


def fold_splits(pool: DataSplits, test: list[int], cfg: ExperimentConfig, group_column: str | None) -> DataSplits:
    """Train / validation / test of one fold: `test` positions of the pooled dataset, validation carved from the rest."""
    full, data = pool.train, cfg.data
    test_set = set(test)
    rest = [p for p in range(len(full)) if p not in test_set]
    units = units_of(subset(full, rest), group_column)
    labels = None
    if data.stratify and full.label_type == "single_label":
        encoded = full.labels()
        labels = [int(encoded[rest[u[0]]]) for u in units]
    notes = []
    if data.val_fraction > 0:
        assignment, notes = assign_splits(len(units), labels, data.val_fraction, 0.0, data.split_seed)
    else:
        assignment = ["train"] * len(units)
    train = sorted(rest[p] for u, a in zip(units, assignment) if a == "train" for p in u)
    validation = sorted(rest[p] for u, a in zip(units, assignment) if a == "validation" for p in u)
    splits = DataSplits(subset(full, train), subset(full, validation) if validation else None, subset(full, test),
                        pool.vocab, [*pool.notes, f"validation carved out of the training folds (seed {data.split_seed})",
                                     *notes])
    if data.shots_per_class:
        apply_shots(splits, data.shots_per_class, data.split_seed if data.shots_seed is None else data.shots_seed,
                    group_column)
    return splits


def _scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Float metrics, nested dicts flattened with '/' (e.g. ``zero_shot/image/accuracy``)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, float) and not key.startswith("chance"):
            out[f"{prefix}{key}"] = value
    return out


def summarize_folds(per_fold: list[dict[str, Any]], split: str) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation over folds of every scalar metric of `split`."""
    values: dict[str, list[float]] = {}
    for fold in per_fold:
        for key, value in _scalars(fold.get(split) or {}).items():
            values.setdefault(key, []).append(value)
    mean = {k: statistics.fmean(v) for k, v in values.items()}
    std = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()}
    return mean, std


def run_crossval(cfg: ExperimentConfig, run_one: RunFn, dataset: Any = None) -> dict[str, Any]:
    """Run every fold with `run_one(fold_cfg, splits=...)` (the runner's `run`) and write the summary."""
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
    state.print(f"cross-validation: {how}, {len(folds)} folds over {len(pool.train)} rows")
    per_fold = []
    for name, test in folds:
        state.print(f"cross-validation: {name} ({len(test)} test rows)")
        fold_cfg = copy.deepcopy(pooled)
        fold_cfg.train.output_dir = os.path.join(out, "folds", name)
        metrics = run_one(fold_cfg, splits=fold_splits(pool, test, cfg, group_column))
        per_fold.append({"fold": name, **{k: metrics.get(k) for k in ("split_sizes", "best_epoch", "epochs_run",
                                                                      "train_time_s", "validation", "test")}})
    summary: dict[str, Any] = {"scheme": how, "num_folds": len(folds), "std": "sample standard deviation (ddof=1)"}
    for split in ("test", "validation"):
        mean, std = summarize_folds(per_fold, split)
        summary[f"{split}_mean"], summary[f"{split}_std"] = mean, std
    summary["folds"] = per_fold
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
    notes = [f"Cross-validation ({summary['scheme']}), {summary['num_folds']} folds; std is the sample standard "
             "deviation over folds. Each fold's own report is in folds/<fold>/."]
    for fold in summary["folds"]:
        scalars = _scalars(fold.get("test") or {})
        shown = ", ".join(f"{k}={v:.4f}" for k, v in scalars.items() if "/" not in k)
        notes.append(f"{fold['fold']}: {fold.get('split_sizes')}; test {shown}")
    return write_report(out, table, title=f"{task}: {summary['num_folds']}-fold cross-validation", notes=notes)
