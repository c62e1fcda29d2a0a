"""Evaluate a saved model on a manifest, through the same task and prediction code as training::

    multimodal-evaluate --model DIR --data MANIFEST [--task classification|retrieval|zero_shot] \\
        [--output DIR] [--templates "a photo of a {}." ...|FILE] [--classes ...] [--batch-size 64] [--html]
        [--attack pgd|fgsm --epsilon 0.03 --attack-steps 10 --attack-on image ...]

Without ``--task`` the model folder decides: a classifier (a task head) is scored as classification, a
two-tower model as retrieval. The outputs go beside the model folder, into ``eval-<task>-<manifest name>/``
(never inside it, so the folder stays a clean model to ship). The manifest is read into the task's dataset (same decoding and checks as training), the model runs
through `multimodal.training.predict` (under ``accelerate launch`` each process takes a shard and every
example is counted once) and the task scores it: classification with the metrics of the training run,
retrieval in both directions, zero-shot classification of the non-text modality from prompt templates.
Writes ``metrics.json`` and ``report.md`` (+ PNG plots, + ``report.html`` with ``--html``). With ``--attack``
(classification), the same examples are scored again under a seeded PGD/FGSM attack
(`multimodal.training.adversarial`): ``metrics.json`` gets ``robust`` (accuracy, macro-F1, ... under attack).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any, Optional

import torch

from multimodal.cache import (
    BACKENDS,
    DEFAULT_BACKEND,
    PRECISIONS,
    CachedFeatureCollator,
    cache_datasets,
    frozen_modalities,
)
from multimodal.config.schema import ADVERSARIAL_TARGETS, AdversarialConfig, ConfigError, ExperimentConfig
from multimodal.data.dataset import DataError
from multimodal.data.loading import Collator, make_dataloader
from multimodal.data.manifest import read_manifest
from multimodal.data.media import apply_audio_window, apply_image_draft
from multimodal.errors import DEBUG_HELP, user_errors
from multimodal.evaluation.report import EvalResult, write_result
from multimodal.files import write_json
from multimodal.models.base import load_model
from multimodal.registry import get_task
from multimodal.tasks.base import Task
from multimodal.training.accelerator import finish_processes
from multimodal.training.adversarial import Adversary
from multimodal.training.predict import predict

TASKS = ("classification", "retrieval", "zero_shot")


def saved_labels(model_dir: str) -> Optional[list[str]]:
    """The training label order from ``labels.json`` in the model folder or next to it, if there is one."""
    for path in (os.path.join(model_dir, "labels.json"), os.path.join(os.path.dirname(os.path.abspath(model_dir)), "labels.json")):
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                names = data["labels"] if isinstance(data, dict) else data
            except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
                raise DataError(f"{path}: not a label list written by a run ({type(err).__name__}: {err})") from None
            if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
                raise DataError(f"{path}: 'labels' must be a list of class names (strings), got "
                                f"{json.dumps(names)[:80]}")
            return [str(n) for n in names]
    return None


def _count(minimum: int):
    """An argparse type: an integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def default_task(model: Any) -> str:
    """The evaluation a saved model answers: classification for a model with a task head, else retrieval."""
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "num_outputs"):
        return "classification"
    if hasattr(model, "encode") and hasattr(head, "pairs"):
        return "retrieval"
    raise ConfigError(f"cannot tell which evaluation a {type(model).__name__} answers; pass --task")


def default_output(model_dir: str, task: str, data: str) -> str:
    """Where the outputs go without --output: beside the model folder, named by the task and the manifest."""
    parent = os.path.dirname(os.path.abspath(model_dir.rstrip("/\\")))
    stem = os.path.splitext(os.path.basename(data))[0]
    return os.path.join(parent, f"eval-{task}-{stem}")


def task_for(model: Any, task: str, columns: dict[str, Optional[str]], label_column: Optional[str],
             templates: Optional[Sequence[str]] = None, class_names: Optional[Sequence[str]] = None,
             batch_size: int = 64) -> Task:
    """The task object that scores `model` for an evaluate `task` (classification, retrieval, zero_shot)."""
    cfg = ExperimentConfig()
    cfg.model.encoders = {m: enc.spec for m, enc in model.encoders.items()}
    for m, column in columns.items():
        if column is not None and m in ("text", "image", "audio"):
            setattr(cfg.data, f"{m}_column", column)
        elif column is not None:
            cfg.data.columns[m] = column
    cfg.data.label_column = label_column
    cfg.eval.batch_size = batch_size
    if task == "classification":
        head = getattr(model, "head", None)
        if head is None or not hasattr(head, "num_outputs"):
            raise ConfigError("--task classification needs a model with a task head (this one is a two-tower model)")
        cfg.model.task = head.label_type
        if head.label_type == "multitask":  # the saved head names its tasks, columns and classes
            cfg.model.tasks = {t["name"]: {k: t[k] for k in ("column", "task", "weight", "labels", "width") if k in t}
                               for t in head.tasks}
    else:
        if not hasattr(model, "encode") or "head" not in dict(model.named_children()) or not hasattr(model.head, "pairs"):
            raise ConfigError(f"--task {task} needs a two-tower (retrieval) model; this one is a {type(model).__name__}")
        cfg.model.task = "retrieval"
        cfg.retrieval.templates = list(templates) if templates else None
        cfg.retrieval.zero_shot = True
    out = get_task(cfg.model.task)(cfg)
    if task != "classification":
        out.class_names = list(class_names) if class_names else None
    return out


def _attacked_modalities(attack: Optional[AdversarialConfig], task: str, model: Any) -> set[str]:
    """The modalities `attack` perturbs (they are never read from the feature cache); `ConfigError` for an attack on
    a task other than classification or on an input the model does not have."""
    if attack is None:
        return set()
    if task != "classification":
        raise ConfigError("--attack scores robust accuracy of a classifier: use it with --task classification")
    for target in attack.on:
        if target not in ADVERSARIAL_TARGETS or ADVERSARIAL_TARGETS[target] not in model.encoders:
            raise ConfigError(f"--attack-on {target}: choose from the model's inputs "
                              f"{sorted(t for t, m in ADVERSARIAL_TARGETS.items() if m in model.encoders)}")
    return {ADVERSARIAL_TARGETS[t] for t in attack.on}


def evaluate_manifest(model: Any, data: str, task: str = "classification", columns: Optional[dict[str, str]] = None,
                      label_column: Optional[str] = "label", templates: Optional[Sequence[str]] = None,
                      class_names: Optional[Sequence[str]] = None, batch_size: int = 64, cache_dir: Optional[str] = None,
                      num_workers: int = 0, accelerator: Any = None, show_progress: bool = True,
                      attack: Optional[AdversarialConfig] = None, cache_precision: str = "fp32",
                      cache_backend: str = DEFAULT_BACKEND) -> EvalResult:
    """Score `model` on the rows of manifest `data` for `task`; returns the task's `EvalResult`. With `attack`
    (classification only), ``metrics["robust"]`` holds the same metrics on adversarial inputs. Frozen towers
    cached under `cache_dir` run in `cache_precision` (``data.feature_cache_precision``) on `cache_backend`
    (``data.feature_cache_backend``)."""
    if task not in TASKS:
        raise ConfigError(f"unknown evaluation task {task!r}; choose one of {TASKS}")
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    columns = {m: (columns or {}).get(m, m) for m in model.encoders}
    label = label_column if task != "retrieval" or label_column else None
    runner = task_for(model, task, columns, label, templates, class_names, batch_size)
    labels = list(class_names) if (class_names and task == "classification") else None
    dataset = runner.dataset_from_rows(read_manifest(data), os.path.dirname(os.path.abspath(data)), data, labels,
                                       progress=show_progress)
    if task == "classification" and dataset.vocab is not None and len(dataset.vocab) != model.head.num_outputs:
        raise DataError(f"{data}: {len(dataset.vocab)} labels {dataset.vocab.names} but the model has "
                        f"{model.head.num_outputs} outputs; pass the training label list (--classes, or labels.json "
                        "in/next to the model dir)")
    model = model.to(accelerator.device).eval()
    attacked = _attacked_modalities(attack, task, model)
    cached: dict[str, Any] = {}
    datasets: dict[str, Any] = {"eval": dataset}
    apply_audio_window(datasets.values(), model.get_preprocessors(False))  # decode only the clip the model keeps
    apply_image_draft(datasets.values(), model.get_preprocessors(False))  # eval-mode: JPEGs down to the resize
    cacheable = [m for m in frozen_modalities(model) if m not in attacked]
    if cache_dir and cacheable:
        datasets, cached = cache_datasets(model, datasets, cache_dir, modalities=cacheable, show_progress=show_progress,
                                          precision=cache_precision, backend=cache_backend)
    collate = Collator({m: p for m, p in model.get_preprocessors(False).items() if m not in cached}, runner.label_type)
    loader = make_dataloader(datasets["eval"], CachedFeatureCollator(collate, cached) if cached else collate,
                             batch_size, num_workers=num_workers)
    preds = predict(model, accelerator.prepare(loader), accelerator, batch_loss=runner.batch_loss)
    result = runner.evaluate(preds, dataset, model, full=True)
    if attack is not None:
        adversary = Adversary(attack, seed=0)
        attacked_preds = predict(model, accelerator.prepare(loader), accelerator, batch_loss=runner.batch_loss,
                                 forward_fn=adversary.attacked_output)
        robust = runner.evaluate(attacked_preds, dataset, model, full=False).metrics
        robust["attack"] = {"method": attack.method, "epsilon": attack.epsilon, "steps": adversary.steps,
                            "step_size": adversary.step_size, "on": list(attack.on)}
        result.metrics["robust"] = robust
        result.notes.append(f"Robust metrics: {attack.method.upper()} ({adversary.steps} steps) on {', '.join(attack.on)}, "
                            f"epsilon {attack.epsilon}" + (f": accuracy {robust['accuracy']:.4f}" if "accuracy" in robust else ""))
    if task == "zero_shot":
        zero_shot = result.metrics.get("zero_shot") or {}
        if not zero_shot:
            raise DataError(f"{data}: zero-shot evaluation needs a text tower and a label column ({label_column!r})")
        (modality, metrics), = list(zero_shot.items())[:1]
        result = EvalResult({"modality": modality, **metrics}, confusion=metrics["confusion_matrix"],
                            class_names=metrics["class_names"], notes=[n for n in result.notes if n.startswith("Zero-shot")])
    result.metrics["num_examples"] = int(preds["index"].shape[0])
    return result


def _parser() -> argparse.ArgumentParser:
    """The command line of multimodal-evaluate."""
    parser = argparse.ArgumentParser(prog="multimodal-evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model directory (config.json + model.safetensors)")
    parser.add_argument("--data", required=True, help="manifest (CSV/TSV/JSONL/Parquet)")
    parser.add_argument("--task", default=None, choices=TASKS,
                        help="none: read from the model folder (a classifier: classification; two towers: retrieval)")
    parser.add_argument("--output", default=None,
                        help="output directory; none: eval-<task>-<manifest name>/ beside the model folder")
    parser.add_argument("--templates", nargs="+", default=None,
                        help="zero-shot prompt templates with {} for the class name, or one file with a template per line")
    parser.add_argument("--classes", nargs="+", default=None,
                        help="class names (zero-shot: none = the distinct labels; classification: the training label "
                             "order, none = labels.json in or beside the model folder)")
    parser.add_argument("--batch-size", type=_count(1), default=64, help="examples per forward pass")
    parser.add_argument("--text-column", default="text", help="manifest column of the text")
    parser.add_argument("--image-column", default="image", help="manifest column of the image paths")
    parser.add_argument("--audio-column", default="audio", help="manifest column of the audio paths")
    parser.add_argument("--item-column", default=None, help="column of the one non-text modality (overrides its default)")
    parser.add_argument("--label-column", default="label", help="manifest column of the labels")
    parser.add_argument("--cache-dir", default=None, help="reuse/store the features of frozen (locked) encoders here")
    parser.add_argument("--cache-precision", choices=PRECISIONS, default="fp32",
                        help="precision of the cached frozen towers (auto: bf16 where the hardware has it and the "
                             "features agree with fp32; bf16 is faster, its probe scores ~0.35 points lower)")
    parser.add_argument("--cache-backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="what runs the cached frozen towers in fp32 (onnx: ONNX Runtime, parity-checked against "
                             "torch; auto: onnx where onnxruntime is installed and the fill is large enough)")
    parser.add_argument("--num-workers", type=_count(0), default=0, help="DataLoader worker processes")
    parser.add_argument("--html", action="store_true", help="also write report.html")
    parser.add_argument("--attack", choices=("pgd", "fgsm"), default=None,
                        help="also score robust accuracy under this attack (classification)")
    parser.add_argument("--epsilon", type=float, default=0.03,
                        help="attack radius: [0, 1] pixel units for image, waveform units for audio, L2 for text_embeddings")
    parser.add_argument("--attack-steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--attack-step-size", type=float, default=None, help="none: 2.5 * epsilon / steps")
    parser.add_argument("--attack-on", nargs="+", default=["image"], help="image, audio and/or text_embeddings")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let Python code shipped in the model folder (transformers auto_map) run; off by default")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """CLI: evaluate a saved model on a manifest and write metrics.json + report."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with user_errors(args.debug):
        if not os.path.exists(os.path.join(args.model, "config.json")):
            raise DataError(f"{args.model!r} is not a saved model directory (no config.json); point --model at the "
                            "'model' folder a recipe writes")
        model = load_model(args.model, trust_remote_code=args.trust_remote_code)
        task = args.task or default_task(model)
        if not args.task:
            print(f"task: {task} (from the model folder; --task overrides)")
        columns = {"text": args.text_column, "image": args.image_column, "audio": args.audio_column}
        others = [m for m in model.encoders if m != "text"]
        if args.item_column and len(others) == 1:
            columns[others[0]] = args.item_column
        classes = args.classes or (saved_labels(args.model) if task == "classification" else None)
        attack = None
        if args.attack:
            if not args.epsilon > 0 or args.attack_steps < 1:
                raise ConfigError(f"--epsilon must be > 0 and --attack-steps >= 1 (got {args.epsilon}, {args.attack_steps})")
            attack = AdversarialConfig(method=args.attack, epsilon=args.epsilon, steps=args.attack_steps,
                                       step_size=args.attack_step_size, on=list(args.attack_on))
        result = evaluate_manifest(model, args.data, task, columns, args.label_column, args.templates, classes,
                                   args.batch_size, args.cache_dir, args.num_workers, attack=attack,
                                   cache_precision=args.cache_precision, cache_backend=args.cache_backend)
    output = args.output or default_output(args.model, task, args.data)
    metrics = {"task": task, "data": os.path.abspath(args.data), **result.metrics}
    write_json(os.path.join(output, "metrics.json"), metrics)
    write_result(output, result, title=f"{task.replace('_', '-')} evaluation: {os.path.basename(args.data)}",
                 html=args.html)
    headline = {k: v for k, v in metrics.items() if isinstance(v, float) and ("/" not in k or k.endswith(("R@1", "R@5", "R@10")))}
    if "robust" in metrics:
        headline.update({f"robust/{k}": v for k, v in metrics["robust"].items() if isinstance(v, float)})
    print(json.dumps(headline, indent=1))
    print(f"wrote {os.path.join(output, 'metrics.json')} and {os.path.join(output, 'report.md')}")
    finish_processes()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
