"""One runner for every task: `run(config)` trains, evaluates validation and test, and writes the outputs.

Under ``accelerate launch`` every process runs it: data splits are built on each rank, the feature cache is
filled cooperatively, training is DDP, and test evaluation goes through the same gathered prediction loop
as validation (`multimodal.training.predict`), so each test example is counted once. The main process
writes ``<output_dir>/``: ``config.yaml`` (resolved), ``splits/`` (the rows each split used), ``model/``
(best model, ``save_pretrained``, with ``labels.json``), ``labels.json``, ``metrics.json``,
``training_curves.png`` and ``report.md`` / ``report.html`` with plots for the test split.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from typing import Any, Optional

import numpy as np
import torch
from accelerate.utils import gather_object

from encoders.base import jsonable
from multimodal.cache import CachedFeatureCollator, cache_datasets, frozen_modalities, resolve_cache_dir
from multimodal.config.loading import config_to_dict, parse_cli
from multimodal.config.method import method_of
from multimodal.config.schema import ADVERSARIAL_TARGETS, ExperimentConfig
from multimodal.data import augment
from multimodal.data.loading import Collator, make_dataloader
from multimodal.data.media import apply_audio_window, apply_image_draft
from multimodal.data.splits import DataSplits, write_splits
from multimodal.data.streaming import StreamingDataset, stream_loader
from multimodal.errors import debug_requested, user_errors
from multimodal.evaluation.plots import plot_training_curves
from multimodal.evaluation.report import EvalResult
from multimodal.evaluation.run_report import skip_note
from multimodal.files import write_json
from multimodal.registry import get_task
from multimodal.tasks.base import Task
from multimodal.tasks.crossval import run_crossval
from multimodal.tasks.run_folder import hold_output_dir, open_run_folder, remove_run_outputs, require_model
from multimodal.training.accelerator import finish_processes, process_state
from multimodal.training.auto import auto_applies, candidate_config, select_method
from multimodal.training.distill import build_distillation
from multimodal.training.methods import after_training, prepare_model, train_model
from multimodal.training.trainer import Trainer, TrainerOptions


def build_loaders(task: Task, model: Any, splits: DataSplits, accelerator: Any = None,
                  progress: bool = True) -> dict[str, Optional[torch.utils.data.DataLoader]]:
    """DataLoaders for train/validation/test; the collate function runs the encoders' preprocessors (train
    mode for training) in the workers. With ``data.feature_cache`` and encoders frozen for the whole run,
    the frozen modalities are encoded once into the on-disk cache and batches carry ``features``."""
    cfg = task.cfg
    datasets: dict[str, Any] = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    apply_audio_window(datasets.values(), model.get_preprocessors(False))  # decode only the clip the model keeps
    cached: dict[str, Any] = {}
    cache_dir = resolve_cache_dir(cfg.data.feature_cache)
    live = augment.live_modalities(model, cfg.data.augment)  # augmented: eval-mode cached features would ignore it
    attacked = {ADVERSARIAL_TARGETS[t] for t in (cfg.train.adversarial.on if cfg.train.adversarial else [])}
    frozen = [m for m in frozen_modalities(model) if m not in live and m not in attacked]  # attacks need the encoder
    streamed = isinstance(splits.train, StreamingDataset)  # no cache: the cache enumerates every item up front
    use_cache = bool(cache_dir and not streamed and cfg.model.unfreeze_after_epochs is None and frozen)
    # Eval-mode data decodes JPEGs only down to twice the resize; training images too when their features are cached.
    eval_mode = [datasets["validation"], datasets["test"], datasets["train"] if use_cache and "image" in frozen else None]
    apply_image_draft(eval_mode, model.get_preprocessors(False))
    if use_cache:
        datasets, cached = cache_datasets(model, datasets, cache_dir, modalities=frozen, accelerator=accelerator,
                                          show_progress=progress, precision=cfg.data.feature_cache_precision,
                                          backend=cfg.data.feature_cache_backend)

    def collator(train: bool) -> Any:
        preprocessors = augment.train_preprocessors(model, cfg.data.augment) if train else model.get_preprocessors(False)
        mixer = augment.batch_mixer(model, cfg.data.augment, task.label_type) if train else None
        base = Collator({m: p for m, p in preprocessors.items() if m not in cached}, task.label_type, mixer,
                        min_samples=2 if train else 1)  # rows skipped while loading must leave BatchNorm two
        return CachedFeatureCollator(base, cached) if cached else base

    tcfg, workers = cfg.train, cfg.data.num_workers
    eval_bs = cfg.eval.batch_size or tcfg.batch_size
    groups = None if streamed else task.train_groups(splits.train)
    # A last training batch of one sample breaks BatchNorm (and has no negatives for InfoNCE): drop that one.
    per_process = -(-(len(groups) if groups is not None else len(splits.train)) // max(1, getattr(accelerator, "num_processes", 1)))
    loaders: dict[str, Optional[torch.utils.data.DataLoader]] = {
        "train": stream_loader(splits.train, collator(True), workers) if streamed else
        make_dataloader(datasets["train"], collator(True), tcfg.batch_size, shuffle=True, num_workers=workers,
                        seed=tcfg.seed, groups=groups, drop_last=per_process % tcfg.batch_size == 1)
    }
    for name in ("validation", "test"):
        ds = datasets[name]
        loaders[name] = (make_dataloader(ds, collator(False), eval_bs, num_workers=workers, seed=tcfg.seed)
                         if ds is not None and len(ds) else None)
    if tcfg.linear_probe or tcfg.probe_init:  # the probe reads training features once, with eval preprocessing
        loaders["train_eval"] = make_dataloader(datasets["train"], collator(False), eval_bs, num_workers=workers,
                                                seed=tcfg.seed)
    return loaders


def train_and_evaluate(task: Task, splits: DataSplits, output_dir: str, modalities: Optional[list[str]] = None,
                       main: bool = True, callbacks: Optional[list[Any]] = None) -> tuple[dict[str, Any], dict[str, EvalResult]]:
    """Train one model (all or some modalities), reload its best weights, evaluate validation and test;
    `callbacks` go to the `Trainer` (called after every epoch's evaluation, e.g. a tuning pruner)."""
    cfg = task.cfg
    state = process_state()
    model = prepare_model(task.build_model(splits, modalities), cfg, task.label_type)  # probe head, LoRA, blocks
    loaders = build_loaders(task, model, splits, accelerator=state if state.num_processes > 1 else None,
                            progress=state.is_main_process)
    tcfg = copy.deepcopy(cfg.train)
    tcfg.output_dir = output_dir
    if not main:
        tcfg.log_with, tcfg.save_checkpoints, tcfg.resume_from = "none", False, None
    metric = tcfg.metric_for_best if tcfg.metric_for_best != "auto" else task.default_metric()
    options = TrainerOptions(
        compute_metrics_fn=lambda preds: task.evaluate(preds, splits.validation, model, full=False).metrics,
        metric_for_best=metric, metric_mode_for_best=task.metric_mode(metric),
        unfreeze_after_epochs=cfg.model.unfreeze_after_epochs, eval_batch_loss=task.batch_loss, callbacks=callbacks,
        loss_fn=build_distillation(cfg, splits.train, model, state.device) if main and cfg.train.distill else None,
        tracker_config=config_to_dict(cfg), run_name="run" if main else "baseline")
    trainer = Trainer(model, tcfg, loaders["train"], loaders["validation"], options=options)
    start = time.time()
    fit = train_model(trainer, task, model, loaders, splits, cfg, output_dir)  # probe solve or trainer.train()
    train_time = time.time() - start
    trainer.accelerator.wait_for_everyone()
    require_model(output_dir, tcfg, trainer.state)  # stop_after_steps before the first epoch ended: say so
    trainer.load_model_weights(os.path.join(output_dir, "model"))  # the best epoch's weights (also under FSDP)
    result: dict[str, Any] = {
        "modalities": sorted(modalities or cfg.model.encoders),
        "frozen": [m for m, e in model.encoders.items() if e.frozen],
        "best_epoch": trainer.state.best_epoch,
        "epochs_run": trainer.state.epoch,
        "stopped_early": trainer.state.stopped_early,
        "train_time_s": round(train_time, 2),
        "metric_for_best": trainer.metric_for_best,
        **({"budget_stop": trainer.budget_stop} if trainer.budget_stop else {}),
        **after_training(trainer, task, model, splits, cfg, output_dir, fit),  # WiSE-FT, parameter counts
    }
    evaluations = evaluate_splits(trainer, task, model, splits, loaders, result)
    result["history"] = trainer.state.history
    result["train_log"] = trainer.state.train_log
    trainer.end()
    return result, evaluations


def evaluate_splits(trainer: Trainer, task: Task, model: Any, splits: DataSplits, loaders: dict[str, Any],
                    result: dict[str, Any]) -> dict[str, EvalResult]:
    """Score the trained model on validation and test through the gathered prediction loop; each split's
    metrics (with its example counts) go into `result`."""
    evaluations: dict[str, EvalResult] = {}
    for name, dataset in (("validation", splits.validation), ("test", splits.test)):
        if loaders.get(name) is None:
            continue
        loader = trainer.eval_loader if name == "validation" else trainer.accelerator.prepare(loaders[name])
        preds = trainer.predict(loader)
        evaluations[name] = task.evaluate(preds, dataset, model, full=True)
        result[name] = evaluations[name].metrics
        if "loss" in preds and "loss" not in result[name]:
            result[name]["loss"] = float(preds["loss"])
        result[name]["num_examples"] = int(preds["index"].shape[0])
        result[name]["num_unique_examples"] = int(torch.unique(preds["index"]).numel())
    return evaluations


def run(cfg: ExperimentConfig, dataset: Any = None, splits: Optional[DataSplits] = None,
        callbacks: Optional[list[Any]] = None) -> dict[str, Any]:
    """Train, evaluate and report the experiment `cfg` describes, for any registered task; returns the metrics.

    With ``data.folds`` / ``data.fold_column`` it runs every cross-validation fold (`run_crossval`). `splits`
    replaces the splits the task would build; `callbacks` go to the main model's `Trainer`. The main process holds
    the lock of ``train.output_dir`` throughout (`hold_output_dir`): a second run into it is refused."""
    main = process_state(cfg.train.dist_timeout_s).is_main_process
    with hold_output_dir(cfg.train.output_dir) if main else contextlib.nullcontext():
        return _run(cfg, dataset, splits, callbacks)


def _run(cfg: ExperimentConfig, dataset: Any, splits: Optional[DataSplits], callbacks: Optional[list[Any]]) -> dict[str, Any]:
    """`run` inside the output folder's lock."""
    if splits is None and (cfg.data.folds is not None or cfg.data.fold_column):
        return run_crossval(cfg, run, dataset)
    state = process_state(cfg.train.dist_timeout_s)
    task = get_task(cfg.model.task)(cfg)
    out = cfg.train.output_dir
    open_run_folder(cfg, state)  # refuses a folder holding another run's results; writes config.yaml
    t0 = time.time()
    splits = _splits(task, state, dataset, splits)
    baseline_task = task
    if auto_applies(cfg):  # train.method auto: candidates, the best kept in out/model
        fused, evaluations = select_method(task, splits, out, train_and_evaluate, build_loaders, state.print)
        baseline_task = type(task)(candidate_config(cfg, fused["method_selection"]["chosen"], None))
    else:
        if cfg.train.method == "auto":
            state.print(f"train.method=auto: the config's switches choose the method ({method_of(cfg)}); no selection")
        fused, evaluations = train_and_evaluate(task, splits, out, main=True, callbacks=callbacks)
    share_skips(state, splits)  # rows skipped while loading (data.validate=false), on whichever process
    if state.is_main_process and splits.vocab is not None:
        splits.vocab.save(os.path.join(out, "model", "labels.json"))  # travels with the model
    metrics = _summary(task, state, splits, fused)
    eval_name = "test" if "test" in evaluations else ("validation" if "validation" in evaluations else None)
    if eval_name is not None:
        chance = task.chance(splits, splits.test if eval_name == "test" else splits.validation)
        if chance:
            metrics["chance"] = chance
            metrics["chance_by_split"] = {name: task.chance(splits, ds) for name, ds in splits.items()
                                          if name != "train" and len(ds)}
    if cfg.eval.baselines and task.supports_baselines and len(metrics["modalities"]) > 1:
        metrics.update(_baselines(baseline_task, splits, state, fused, eval_name))  # auto: the chosen method
    metrics["wall_time_s"] = round(time.time() - t0, 2)
    if state.is_main_process:
        _write_outputs(task, splits, fused, evaluations, metrics, eval_name)
    state.wait_for_everyone()
    return jsonable(metrics)  # as written to metrics.json (NaN -> None, arrays -> lists)


def _splits(task: Task, state: Any, dataset: Any, splits: Optional[DataSplits]) -> DataSplits:
    """The task's splits (or the given ones), their notes printed; the main process records them under splits/."""
    out, main = task.cfg.train.output_dir, state.is_main_process
    splits = splits if splits is not None else task.build_splits(dataset, progress=main)
    for note in splits.notes:
        state.print(f"data: {note}")
    for name, ds in splits.items():
        skips = ds.skip_counts()
        if skips.total:
            state.print(f"data: {name}: {skip_note(skips.to_dict(), len(ds))}; first: {skips.examples[0]}")
    if splits.validation is None:
        state.print("warning: no validation split; the last epoch's model is kept")
    if main:
        write_splits(splits, os.path.join(out, "splits"))
        if splits.vocab is not None:
            splits.vocab.save(os.path.join(out, "labels.json"))
    return splits


def _summary(task: Task, state: Any, splits: DataSplits, fused: dict[str, Any]) -> dict[str, Any]:
    """The head of metrics.json: what ran on which data, then the fused model's result."""
    cfg = task.cfg
    return {
        "task": cfg.model.task,
        "modalities": sorted(cfg.model.encoders),
        **({"fusion": cfg.model.fusion} if task.uses_fusion else {}),
        "encoders": dict(cfg.model.encoders),
        "num_processes": state.num_processes,
        "labels": splits.vocab.names if splits.vocab is not None else None,
        "split_sizes": splits.sizes(),
        "split_notes": splits.notes,
        "skipped": splits.skip_report(),
        "class_counts": class_counts(splits, task.label_type),
        **{k: v for k, v in fused.items() if k != "train_log"},
    }


def _baselines(task: Task, splits: DataSplits, state: Any, fused: dict[str, Any],
               eval_name: Optional[str]) -> dict[str, Any]:
    """One single-modality model per modality (same settings), and how each compares with the fused one."""
    out = task.cfg.train.output_dir
    found: dict[str, Any] = {"baselines": {}}
    for m in sorted(task.cfg.model.encoders):
        state.print(f"baseline: {m} only")
        if state.is_main_process:
            remove_run_outputs(os.path.join(out, "baselines", m))  # trained afresh: nothing of an earlier attempt
        state.wait_for_everyone()
        result, _ = train_and_evaluate(task, splits, os.path.join(out, "baselines", m), [m], main=False)
        result.pop("train_log", None)
        found["baselines"][m] = result
    if eval_name is not None:
        metric = fused["metric_for_best"]
        summary = {"fused": fused.get(eval_name, {}).get(metric)}
        for m, res in found["baselines"].items():
            summary[f"{m}_only"] = res.get(eval_name, {}).get(metric)
        found["comparison"] = {"split": eval_name, "metric": metric, **summary}
    return found


def _write_outputs(task: Task, splits: DataSplits, fused: dict[str, Any], evaluations: dict[str, EvalResult],
                   metrics: dict[str, Any], eval_name: Optional[str]) -> None:
    """metrics.json, the training curves and the report of the evaluated split (main process only)."""
    cfg, out = task.cfg, task.cfg.train.output_dir
    modalities = metrics["modalities"]
    if any(ds.skipped_while_loading() for _, ds in splits.items()):
        write_splits(splits, os.path.join(out, "splits"))  # without the rows found bad while loading
    write_json(os.path.join(out, "metrics.json"), metrics)
    metric_name = fused.get("metric_for_best")
    curves = plot_training_curves(fused.get("train_log", []), fused.get("history", []),
                                  os.path.join(out, "training_curves.png"),
                                  metric=metric_name if metric_name != "loss" else None,
                                  title=f"{'+'.join(modalities)} ({cfg.model.task})", best_epoch=fused.get("best_epoch"))
    if eval_name is None:
        return
    notes = [f"Task {cfg.model.task}; {eval_name} split ({metrics['split_sizes'][eval_name]} rows); trained "
             f"{fused['epochs_run']} epochs in {fused['train_time_s']:.1f}s (best epoch {fused['best_epoch']})."]
    evaluations[eval_name].notes[:0] = notes
    evaluations[eval_name].run, evaluations[eval_name].config = jsonable(metrics), config_to_dict(cfg)
    task.write_report(out, evaluations[eval_name], title=f"{'–'.join(modalities)} {cfg.model.task}: {eval_name}",
                      html=cfg.eval.html_report, extra_plots=[("Training curves", curves)])


def class_counts(splits: DataSplits, label_type: Optional[str]) -> Optional[dict[str, list[int]]]:
    """Rows per class of each split (single-label tasks with a vocabulary; streamed splits left out)."""
    if label_type != "single_label" or splits.vocab is None:
        return None
    return {name: np.bincount(np.asarray(ds.labels(), dtype=np.int64), minlength=len(splits.vocab)).tolist()
            for name, ds in splits.items() if not isinstance(ds, StreamingDataset)}


def share_skips(state: Any, splits: DataSplits) -> None:
    """Under DDP, give every process the rows the others skipped while loading (for metrics.json and splits/)."""
    if state.num_processes < 2:
        return
    mine = {name: ds.skip_log.records() for name, ds in splits.items()}
    for theirs in gather_object([mine]):
        for name, ds in splits.items():
            ds.skip_log.absorb(theirs.get(name, []))


def summarize(metrics: dict[str, Any]) -> str:
    """A few human-readable lines about a finished run."""
    task = get_task(metrics["task"])
    lines = []
    for split in ("validation", "test"):
        if split in metrics:
            vals = ", ".join(f"{k}={v:.4f}" for k, v in task.headline(metrics[split]).items() if isinstance(v, float))
            skipped = skip_note(metrics.get("skipped", {}).get(split), metrics.get("split_sizes", {}).get(split))
            lines.append(f"{split} ({metrics[split].get('num_examples')} examples{'; ' + skipped if skipped else ''}): {vals}")
    if "comparison" in metrics:
        c = metrics["comparison"]
        parts = [f"{k}={v:.4f}" for k, v in c.items() if isinstance(v, float)]
        lines.append(f"{c['split']} {c['metric']}: " + ", ".join(parts))
    cv = metrics.get("cross_validation")
    if cv:
        mean, std = cv["test_mean"], cv["test_std"]
        shown = [k for k in task.headline(mean) if k in std]
        lines.append(f"cross-validation ({cv['scheme']}, {cv['num_folds']} folds), test mean ± std: "
                     + ", ".join(f"{k}={mean[k]:.4f} ± {std[k]:.4f}" for k in shown))
    if "chance" in metrics:
        lines.append("chance: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics["chance"].items()))
    skipped = {k: v["total"] for k, v in metrics.get("skipped", {}).items() if v["total"]}
    if skipped:
        lines.append(f"skipped rows: {skipped}")
    lines.append(f"wall time {metrics.get('wall_time_s')} s")
    return "\n".join(lines)


def recipe_main(default_config: str, argv: Optional[list[str]] = None) -> dict[str, Any]:
    """A recipe's command line: ``[--config FILE] [--debug] [key=value ...]``, then `run`; a user error exits with
    its message alone (``--debug`` or ``MULTIMODAL_DEBUG=1``: with the traceback), an internal one with its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with user_errors(debug_requested(argv)):
        cfg = parse_cli(argv, default_config)
        metrics = run(cfg)
    if process_state().is_main_process:
        print(summarize(metrics))
        print(f"outputs in {os.path.abspath(cfg.train.output_dir)}")
    finish_processes()
    return metrics
