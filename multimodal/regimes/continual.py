"""Continual learning: one model trained on a sequence of tasks, with rehearsal, EWC or WiSE-FT merging.

A continual spec (YAML)::

    continual:                      # the tasks, in order: config files, optionally restricted to some labels
      - {config: recipes/configs/text_image_classification.yaml, labels: [red_even, red_odd]}
      - {config: recipes/configs/text_image_classification.yaml, labels: [blue_even, blue_odd]}
    method: rehearsal               # none | rehearsal | ewc | wise_ft
    replay_per_task: 64             # rehearsal: rows of each finished task kept in a seeded replay buffer
    ewc_lambda: 100.0               # ewc: weight of the diagonal-Fisher penalty of every finished task
    wise_alpha: 0.5                 # wise_ft: merged = (1 - alpha) * before + alpha * after each task
    output_dir: outputs/continual
    overrides: [train.epochs=4]     # applied to every task's config

Every task shares one model (built from the first task's config; the ``model`` sections must agree) and one
label vocabulary (the union of the tasks' labels, so a class-incremental sequence has one head). After each
task the model is scored on every task's test split (validation where there is none): ``continual.json`` /
``continual.md`` hold the accuracy matrix ``acc[i][j]`` (task i after training task j), the average accuracy
after the last task and the backward transfer ``BWT = mean_i<T (acc[i][T] - acc[i][i])`` (negative: forgetting).
"""

from __future__ import annotations

import argparse
import copy
import os
from typing import Any, Optional

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from torch import nn

from multimodal.config.loading import load_config, read_config_file
from multimodal.config.schema import ConfigError
from multimodal.data.dataset import DataError
from multimodal.errors import DEBUG_HELP, user_errors
from multimodal.files import write_json, write_text
from multimodal.models.base import load_weights
from multimodal.registry import get_task
from multimodal.tasks.runner import build_loaders
from multimodal.training.accelerator import finish_processes
from multimodal.training.predict import forward_batch, predict
from multimodal.training.trainer import Trainer, TrainerOptions

METHODS = ("none", "rehearsal", "ewc", "wise_ft")


class PenalizedModel(nn.Module):
    """The model with EWC's ``lambda/2 * sum F (theta - theta*)^2`` added to its training loss."""

    def __init__(self, model: nn.Module, anchors: list[tuple[dict, dict]], strength: float) -> None:
        super().__init__()
        self.model, self.anchors, self.strength = model, anchors, float(strength)

    @property
    def encoders(self) -> Any:
        """The wrapped model's encoders."""
        return self.model.encoders

    def save_pretrained(self, directory: str, state_dict: Optional[dict] = None) -> None:
        """Save the wrapped model (the penalty is training-only)."""
        self.model.save_pretrained(directory, state_dict=state_dict)

    def forward(self, **kwargs: Any) -> Any:
        out = self.model(**kwargs)
        if self.training and out.loss is not None and self.anchors:
            params = dict(self.model.named_parameters())
            penalty = sum((fisher[n] * (params[n] - star[n]) ** 2).sum() for fisher, star in self.anchors for n in fisher)
            out.loss = out.loss + self.strength / 2 * penalty
        return out


def fisher_diagonal(model: nn.Module, loader: Any, max_batches: int = 20) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher information of the trainable parameters (mean squared gradients)."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in trainable.items()}
    model.eval()
    batches = 0
    for batch in loader:
        model.zero_grad(set_to_none=True)
        forward_batch(model, batch).loss.backward()
        for n, p in trainable.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
        batches += 1
        if batches >= max_batches:
            break
    model.zero_grad(set_to_none=True)
    return {n: f / max(batches, 1) for n, f in fisher.items()}


def restrict(dataset: Any, label_ids: Optional[set[int]]) -> Any:
    """A view of a single-label dataset holding only rows whose label id is in `label_ids`."""
    if dataset is None or label_ids is None:
        return dataset
    view = copy.copy(dataset)
    labels = dataset.labels()
    view.indices = [i for i, y in zip(dataset.indices, labels) if int(y) in label_ids]
    if not view.indices:
        raise DataError(f"{dataset.source}: no rows with the task's labels")
    return view


def with_rows(dataset: Any, replay: list[tuple[Any, list[int]]]) -> Any:
    """A view of `dataset` that also holds the replayed table rows of earlier tasks (same table required)."""
    view = copy.copy(dataset)
    seen = set(dataset.indices)
    for earlier, rows in replay:
        if earlier.source != dataset.source or len(earlier.rows) != len(dataset.rows):
            raise ConfigError(f"method=rehearsal replays rows of one table; {earlier.source!r} and {dataset.source!r} "
                              "differ (put the tasks in one manifest and select them with labels:)")
        view.indices = view.indices + [i for i in rows if i not in seen]
        seen.update(rows)
    return view


def accuracy_summary(acc: list[list[Optional[float]]]) -> dict[str, Any]:
    """Average accuracy after the last task, backward transfer and forgetting from ``acc[i][j]``."""
    last = len(acc) - 1
    final = [acc[i][last] for i in range(len(acc))]
    bwt = [acc[i][last] - acc[i][i] for i in range(last)]
    forgetting = [max(acc[i][j] for j in range(i, last)) - acc[i][last] for i in range(last)]
    return {"average_accuracy": float(np.mean(final)), "backward_transfer": float(np.mean(bwt)) if bwt else 0.0,
            "forgetting": [float(f) for f in forgetting]}


def _tasks(spec: dict) -> list[tuple[Any, Any, Optional[list[str]]]]:
    """(config, task, label subset) per entry, all with the union label vocabulary."""
    entries = spec.get("continual")
    if not isinstance(entries, list) or len(entries) < 2:
        raise ConfigError("continual: give a list of at least two tasks (config files or {config:, labels:})")
    overrides = list(spec.get("overrides") or [])
    loaded = []
    for k, entry in enumerate(entries):
        entry = {"config": entry} if isinstance(entry, str) else dict(entry)
        if "config" not in entry:
            raise ConfigError(f"continual[{k}]: missing 'config'")
        cfg = load_config(entry["config"], overrides)
        loaded.append((cfg, entry.get("labels")))
    model0 = yaml.safe_dump(loaded[0][0].model.__dict__, sort_keys=True)
    for k, (cfg, _) in enumerate(loaded):
        if cfg.model.task != "single_label":
            raise ConfigError(f"continual[{k}]: model.task must be single_label (accuracy matrix), got {cfg.model.task!r}")
        if yaml.safe_dump(cfg.model.__dict__, sort_keys=True) != model0:
            raise ConfigError(f"continual[{k}]: its model section differs from the first task's; one model learns them all")
    return [(cfg, get_task(cfg.model.task)(cfg), labels) for cfg, labels in loaded]


def _views(tasks: list[tuple[Any, Any, Optional[list[str]]]]) -> tuple[list[str], list[Any]]:
    """The union label vocabulary, and each task's splits restricted to its labels (all built with that vocabulary)."""
    splits_all = [task.build_splits(progress=False) for _, task, _ in tasks]
    names = sorted({n for s in splits_all for n in s.vocab.names})
    for cfg, _task, _ in tasks:
        cfg.data.labels = names
    splits_all = [task.build_splits(progress=False) for _, task, _ in tasks]  # again, with the union vocabulary
    views = []
    for k, ((_cfg, _, labels), splits) in enumerate(zip(tasks, splits_all)):
        unknown = sorted(set(labels or []) - set(names))
        if unknown:
            raise ConfigError(f"continual[{k}].labels: {unknown} are not labels of the data ({names})")
        ids = {splits.vocab.encode(n) for n in labels} if labels else None
        split = copy.copy(splits)
        split.train, split.validation, split.test = (restrict(d, ids) for d in (splits.train, splits.validation, splits.test))
        views.append(split)
    return names, views


def _train_task(model: nn.Module, cfg: Any, task: Any, split: Any, train_split: Any, output_dir: str,
                anchors: list[tuple[dict, dict]], spec: dict) -> None:
    """Train `model` on one task through the `Trainer` (EWC: its penalty added), then load its best weights."""
    loaders = build_loaders(task, model, train_split, progress=False)
    tcfg = copy.deepcopy(cfg.train)
    tcfg.output_dir, tcfg.save_checkpoints, tcfg.log_with = output_dir, False, "none"
    trained = PenalizedModel(model, anchors, spec.get("ewc_lambda", 100.0)) if spec.get("method") == "ewc" else model
    options = TrainerOptions(metric_for_best=task.default_metric(), eval_batch_loss=task.batch_loss,
                             compute_metrics_fn=lambda p: task.evaluate(p, split.validation, model, full=False).metrics)
    trainer = Trainer(trained, tcfg, loaders["train"], loaders["validation"], options=options)
    trainer.train()
    trainer.end()
    load_weights(model, os.path.join(output_dir, "model"))


def _accuracies(model: nn.Module, tasks: list, views: list, accelerator: Any) -> list[float]:
    """The model's accuracy on every task's test split (validation where there is none)."""
    scores = []
    for (_, task, _), split in zip(tasks, views):
        evaluation = split.test or split.validation
        name = "test" if split.test is not None else "validation"
        loader = build_loaders(task, model, split, progress=False)[name]
        preds = predict(model, accelerator.prepare(loader), accelerator, batch_loss=False)
        scores.append(float(task.evaluate(preds, evaluation, model, full=False).metrics["accuracy"]))
    return scores


def run_continual(spec: dict) -> dict[str, Any]:
    """Train the tasks of `spec` in order with its method; returns (and writes) the accuracy matrix report."""
    method = spec.get("method", "none")
    if method not in METHODS:
        raise ConfigError(f"method: {method!r}; choose one of {', '.join(METHODS)}")
    out = spec.get("output_dir", "outputs/continual")
    tasks = _tasks(spec)
    names, views = _views(tasks)
    model = tasks[0][1].build_model(views[0])
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    acc: list[list[Any]] = [[None] * len(tasks) for _ in tasks]
    replay: list[Any] = []
    anchors: list[tuple[dict, dict]] = []
    for j, ((cfg, task, _), split) in enumerate(zip(tasks, views)):
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        train_split = copy.copy(split)
        if replay:
            train_split.train = with_rows(split.train, replay)
        _train_task(model, cfg, task, split, train_split, os.path.join(out, f"task-{j}"), anchors, spec)
        if method == "wise_ft" and j > 0:
            alpha = float(spec.get("wise_alpha", 0.5))
            model.load_state_dict({k: (1 - alpha) * before[k] + alpha * v if v.is_floating_point() else v
                                   for k, v in model.state_dict().items()})
        if method == "rehearsal":
            rng = np.random.default_rng([int(spec.get("seed", 0)), j])
            keep = rng.choice(len(split.train), min(int(spec.get("replay_per_task", 64)), len(split.train)), replace=False)
            replay.append((split.train, [split.train.indices[k] for k in sorted(keep.tolist())]))
        if method == "ewc":
            fisher_loader = build_loaders(task, model, split, progress=False)["train"]
            anchors.append((fisher_diagonal(model, fisher_loader),
                            {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}))
        for i, score in enumerate(_accuracies(model, tasks, views, accelerator)):
            acc[i][j] = score
        accelerator.print(f"after task {j + 1}: accuracy " + " ".join(f"{a:.3f}" for a in [r[j] for r in acc]))
    result = {"method": method, "labels": names, "accuracy_matrix": acc, **accuracy_summary(acc)}
    _write_report(result, out)
    model.save_pretrained(os.path.join(out, "model"))
    return result


def _write_report(result: dict[str, Any], out: str) -> None:
    """``continual.json`` and ``continual.md`` (the accuracy matrix, average accuracy, backward transfer)."""
    acc = result["accuracy_matrix"]
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "continual.json"), result)
    lines = [f"# Continual learning ({result['method']})", "",
             "| task \\ after | " + " | ".join(f"task {j + 1}" for j in range(len(acc))) + " |",
             "|---|" + "---|" * len(acc)]
    lines += [f"| task {i + 1} | " + " | ".join(f"{a:.3f}" for a in row) + " |" for i, row in enumerate(acc)]
    lines += ["", f"Average accuracy {result['average_accuracy']:.3f}; backward transfer {result['backward_transfer']:+.3f}."]
    write_text(os.path.join(out, "continual.md"), "\n".join(lines) + "\n")


def main(argv: Optional[list[str]] = None) -> int:
    """``multimodal-continual --config spec.yaml [key=value ...]``: the spec's top-level keys as overrides."""
    parser = argparse.ArgumentParser(description="Continual learning over a sequence of task configs.")
    parser.add_argument("--config", required=True, help="YAML with continual: [...], method, ...")
    parser.add_argument("settings", nargs="*", help="top-level spec keys, e.g. method=ewc output_dir=out/")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    with user_errors(args.debug):
        spec = read_config_file(args.config)
        for item in args.settings:
            key, _, value = item.partition("=")
            spec[key] = yaml.safe_load(value)
        base = os.path.dirname(os.path.abspath(args.config))
        spec["continual"] = [_relative(e, base) for e in spec.get("continual") or []]
        result = run_continual(spec)
    print(open(os.path.join(spec.get("output_dir", "outputs/continual"), "continual.md"), encoding="utf-8").read())
    finish_processes()
    return 0 if result else 1


def _relative(entry: Any, base: str) -> Any:
    """Task config paths in a spec resolve against the spec's folder (absolute paths stay)."""
    entry = {"config": entry} if isinstance(entry, str) else dict(entry)
    if isinstance(entry.get("config"), str) and not os.path.isabs(entry["config"]):
        candidate = os.path.join(base, entry["config"])
        entry["config"] = candidate if os.path.exists(candidate) else entry["config"]
    return entry


if __name__ == "__main__":
    raise SystemExit(main())
