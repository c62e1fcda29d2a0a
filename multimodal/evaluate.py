"""Evaluate a saved model on a manifest: cross-modal retrieval, zero-shot classification, classification.

Library functions (`evaluate_retrieval`, `evaluate_zero_shot`, `evaluate_classification`,
`run_evaluation`) and a CLI::

    python -m multimodal.evaluate --model DIR --data MANIFEST --task retrieval|zero_shot|classification \\
        [--output DIR] [--templates "a photo of a {}." ...|FILE] [--batch-size 64] [--html]

Retrieval manifests have one row per (item, caption) pair; rows with the same item path are one item
with several captions (see `multimodal.retrieval` for the Flickr30k/COCO conventions and the
pessimistic tie rule). Zero-shot manifests need an item column and a label column; class prompts are
built from templates and averaged in embedding space. Output: ``metrics.json`` and ``report.md``
(+ PNG plots, + ``report.html`` with ``--html``).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from encoders.base import EncoderOutput
from multimodal.report import RetrievalExamples, write_report
from multimodal.retrieval import (
    DEFAULT_KS,
    DEFAULT_TEMPLATES,
    group_captions,
    retrieval_metrics,
    zero_shot_metrics,
)

TASKS = ("retrieval", "zero_shot", "classification")


# --------------------------------------------------------------------------------------------------
# Embedding


def item_modality(model: Any) -> str:
    """The non-text modality of a text/item dual encoder."""
    others = [m for m in model.encoders if m != "text"]
    if "text" not in model.encoders or len(others) != 1:
        raise ValueError(f"retrieval needs a text encoder and one item encoder; the model has {list(model.encoders)}")
    return others[0]


def project(model: Any, modality: str, output: EncoderOutput) -> torch.Tensor:
    """L2-normalised embedding of one modality's encoder output through the contrastive head."""
    fusion = model.fusion
    projections = getattr(fusion, "projections", None)
    if projections is None or modality not in projections:
        raise ValueError(
            f"the model's fusion ({type(fusion).__name__}) has no {modality} projection: retrieval and zero-shot "
            "evaluation need a contrastive model (model.fusion=contrastive)"
        )
    return F.normalize(projections[modality](output.pooled), dim=-1)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed(
    model: Any,
    modality: str,
    sources: Sequence[Any],
    batch_size: int = 64,
    cache_dir: Optional[str] = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Embeddings ``[N, D]`` of texts, or of image/audio paths or raw samples, in eval mode.

    With `cache_dir` and a frozen encoder (`encoder.frozen`, kept by `from_pretrained`), encoder outputs
    come from / go to the feature cache (`multimodal.cache`); trainable encoders are always run.
    """
    from multimodal.cache import FeatureCache, load_raw

    model.eval()
    encoder = model.encoders[modality]
    out: list[torch.Tensor] = []
    if cache_dir is not None and getattr(encoder, "frozen", False):
        cache = FeatureCache(encoder, cache_dir, store_tokens=False)
        keys = cache.build(list(sources), batch_size=batch_size, show_progress=show_progress)
        for start in range(0, len(keys), batch_size):
            feats = cache.load(keys[start : start + batch_size])
            out.append(project(model, modality, EncoderOutput(feats.pooled.to(_device(model)))).cpu())
        return torch.cat(out) if out else torch.zeros(0, model.fusion.output_dim)
    preprocess = encoder.get_preprocessor(train=False)
    device = _device(model)
    starts = range(0, len(sources), batch_size)
    if show_progress and len(sources) > batch_size:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"embedding {modality}", leave=False)
    for start in starts:
        raw = [load_raw(modality, s) for s in sources[start : start + batch_size]]
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in preprocess(raw).items()}
        out.append(project(model, modality, encoder(inputs)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.fusion.output_dim)


# --------------------------------------------------------------------------------------------------
# Manifests


def _read(manifest: str) -> tuple[list[dict], str]:
    from multimodal.data import read_manifest

    rows = read_manifest(manifest)
    if not rows:
        raise ValueError(f"{manifest}: no rows")
    return rows, os.path.dirname(os.path.abspath(manifest))


def _column(rows: list[dict], manifest: str, column: str, what: str) -> list[Any]:
    if column not in rows[0]:
        raise KeyError(f"{manifest}: column {column!r} (for {what}) not found; columns are {sorted(rows[0])}")
    from multimodal.data import is_missing

    values = []
    for i, row in enumerate(rows):
        value = row[column]
        if is_missing(value):
            raise ValueError(f"{manifest}: row {i + 1} (line {i + 2}): {what} column {column!r} is empty")
        values.append(value)
    return values


def _resolve_items(values: list[Any], base_dir: str, manifest: str, column: str) -> list[str]:
    from multimodal.data import resolve_path

    out = []
    for i, v in enumerate(values):
        path = resolve_path(v, base_dir)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{manifest}: row {i + 1} (line {i + 2}): {column} file {path!r} not found")
        out.append(path)
    return out


def load_retrieval_pairs(
    manifest: str, modality: str, text_column: str = "text", item_column: Optional[str] = None
) -> tuple[list[str], list[str], list[int]]:
    """(unique item paths, captions, caption -> item index) from a manifest of (item, caption) rows."""
    rows, base = _read(manifest)
    item_column = item_column or modality
    items = _resolve_items(_column(rows, manifest, item_column, modality), base, manifest, item_column)
    captions = [str(c) for c in _column(rows, manifest, text_column, "caption")]
    return group_captions(items, captions)


def read_templates(templates: Optional[Sequence[str]], modality: str) -> list[str]:
    """Prompt templates from a list, or from a file given as the only entry (one per line), or the defaults."""
    if not templates:
        return list(DEFAULT_TEMPLATES.get(modality, ["{}"]))
    if len(templates) == 1 and os.path.isfile(templates[0]):
        with open(templates[0], encoding="utf-8") as f:
            templates = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{}}' placeholder for the class name")
    return list(templates)


# --------------------------------------------------------------------------------------------------
# Tasks


def _spread(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, num=min(k, n)).round().astype(int).tolist())) if n else []


def evaluate_retrieval(
    model: Any,
    manifest: str,
    text_column: str = "text",
    item_column: Optional[str] = None,
    batch_size: int = 64,
    ks: Sequence[int] = DEFAULT_KS,
    cache_dir: Optional[str] = None,
    num_examples: int = 5,
    show_progress: bool = True,
) -> tuple[dict[str, Any], RetrievalExamples]:
    """Recall@K / median rank / mAP@10 in both directions on a manifest, plus examples for the report."""
    modality = item_modality(model)
    items, captions, c2i = load_retrieval_pairs(manifest, modality, text_column, item_column)
    item_emb = embed(model, modality, items, batch_size, cache_dir, show_progress)
    text_emb = embed(model, "text", captions, batch_size, cache_dir, show_progress)
    sim = text_emb @ item_emb.t()
    metrics = retrieval_metrics(sim, c2i, ks=ks, item_name=modality)
    c2i_t = torch.tensor(c2i)
    examples = RetrievalExamples(modality=modality)
    top = min(5, len(items))
    for q in _spread(len(captions), num_examples):
        order = torch.argsort(sim[q], descending=True, stable=True)[:top].tolist()
        examples.text_queries.append(captions[q])
        examples.text_results.append([items[j] for j in order])
        examples.text_correct.append([j == c2i[q] for j in order])
    top_caps = min(5, len(captions))
    for i in _spread(len(items), num_examples):
        order = torch.argsort(sim[:, i], descending=True, stable=True)[:top_caps].tolist()
        examples.item_queries.append(items[i])
        examples.item_results.append([captions[c] for c in order])
        examples.item_correct.append([bool(c2i_t[c] == i) for c in order])
    return metrics, examples


@torch.no_grad()
def zero_shot_weights(
    model: Any, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 64, cache_dir: Optional[str] = None
) -> torch.Tensor:
    """Class embeddings ``[C, D]``: each class's prompts embedded, averaged, re-normalised."""
    prompts = [t.format(name) for name in class_names for t in templates]
    emb = embed(model, "text", prompts, batch_size, cache_dir, show_progress=False)
    per_class = emb.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def evaluate_zero_shot(
    model: Any,
    manifest: str,
    templates: Optional[Sequence[str]] = None,
    class_names: Optional[Sequence[str]] = None,
    label_column: str = "label",
    item_column: Optional[str] = None,
    batch_size: int = 64,
    cache_dir: Optional[str] = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Zero-shot classification of the manifest's items from class-name prompts (top-1/top-5, macro-F1).

    Class names default to the sorted distinct labels; rows with the same item are counted once.
    """
    modality = item_modality(model)
    rows, base = _read(manifest)
    item_column = item_column or modality
    paths = _resolve_items(_column(rows, manifest, item_column, modality), base, manifest, item_column)
    labels = [str(v) for v in _column(rows, manifest, label_column, "label")]
    seen: dict[str, str] = {}
    for i, (p, y) in enumerate(zip(paths, labels)):
        if seen.setdefault(p, y) != y:
            raise ValueError(f"{manifest}: row {i + 1}: item {p!r} has two labels ({seen[p]!r} and {y!r})")
    items, item_labels = list(seen), list(seen.values())
    names = list(class_names) if class_names else sorted(set(item_labels))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(item_labels) - set(index))
    if unknown:
        raise ValueError(f"{manifest}: labels {unknown} are not among the class names {names}")
    templates = read_templates(templates, modality)
    weights = zero_shot_weights(model, names, templates, batch_size, cache_dir)
    item_emb = embed(model, modality, items, batch_size, cache_dir, show_progress)
    logits = item_emb @ weights.t()
    metrics = zero_shot_metrics(logits, [index[y] for y in item_labels], names)
    metrics["templates"] = templates
    return metrics


@torch.no_grad()
def evaluate_classification(model: Any, manifest: str, batch_size: int = 64, label_column: str = "label",
                            columns: Optional[dict[str, str]] = None, labels: Optional[Sequence[str]] = None,
                            num_workers: int = 0) -> dict[str, Any]:
    """Accuracy / macro-F1 (/AUROC) of a fused classifier with `multimodal.metrics`, plus a confusion matrix."""
    from multimodal.data import Collator, LabelVocab, MultimodalDataset, read_manifest
    from multimodal.metrics import compute_metrics

    if model.head is None:
        raise ValueError("classification evaluation needs a model with a task head (this one has none)")
    task = model.head.task
    rows = read_manifest(manifest)
    columns = columns or {m: m for m in model.encoders}
    vocab = LabelVocab(list(labels), task) if labels else None
    dataset = MultimodalDataset(rows, columns, label_column=label_column, task=task, vocab=vocab,
                                base_dir=os.path.dirname(os.path.abspath(manifest)), source=manifest)
    if task in ("single_label", "multi_label") and len(dataset.vocab) != model.head.num_outputs:
        raise ValueError(
            f"{manifest}: {len(dataset.vocab)} labels {dataset.vocab.names} but the model has {model.head.num_outputs} "
            "outputs; pass the training label list (--classes, or labels.json in/next to the model dir)"
        )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=Collator(model.get_preprocessors(False), task))
    model.eval()
    device = _device(model)
    all_logits, all_labels = [], []
    for batch in loader:
        inputs = {m: {k: v.to(device) for k, v in d.items()} for m, d in batch["inputs"].items()}
        present = {m: v.to(device) for m, v in batch["present"].items()}
        out = model(inputs=inputs, present=present)
        all_logits.append(out.logits.float().cpu())
        all_labels.append(batch["labels"])
    logits, y = torch.cat(all_logits), torch.cat(all_labels)
    metrics: dict[str, Any] = compute_metrics(logits, y, task)
    if task == "single_label":
        from sklearn.metrics import confusion_matrix

        metrics["confusion_matrix"] = confusion_matrix(
            y.numpy(), logits.argmax(-1).numpy(), labels=list(range(len(dataset.vocab)))).tolist()
        metrics["class_names"] = list(dataset.vocab.names)
    return metrics


# --------------------------------------------------------------------------------------------------
# Entry points


def load_model(model_dir: str, device: str | torch.device = "cpu") -> Any:
    """`MultimodalModel.from_pretrained(model_dir)` in eval mode on `device`."""
    from multimodal.model import MultimodalModel

    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir!r} is not a saved model directory (no config.json); "
                                "point --model at the 'model' folder a recipe writes")
    return MultimodalModel.from_pretrained(model_dir).to(device).eval()


def _saved_labels(model_dir: str) -> Optional[list[str]]:
    for path in (os.path.join(model_dir, "labels.json"), os.path.join(os.path.dirname(os.path.abspath(model_dir)), "labels.json")):
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return list(data["labels"] if isinstance(data, dict) else data)
    return None


def run_evaluation(
    model: Any,
    data: str,
    task: str,
    output_dir: str,
    templates: Optional[Sequence[str]] = None,
    class_names: Optional[Sequence[str]] = None,
    batch_size: int = 64,
    text_column: str = "text",
    item_column: Optional[str] = None,
    label_column: str = "label",
    cache_dir: Optional[str] = None,
    html: bool = False,
    title: Optional[str] = None,
    extra: Optional[dict[str, Any]] = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` on manifest `data` for `task`; write ``metrics.json`` and the report into `output_dir`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    os.makedirs(output_dir, exist_ok=True)
    examples, confusion, names, notes = None, None, None, []
    if task == "retrieval":
        metrics, examples = evaluate_retrieval(model, data, text_column, item_column, batch_size,
                                               cache_dir=cache_dir, show_progress=show_progress)
        notes.append(
            f"{metrics['num_captions']} captions, {metrics['num_items']} {examples.modality} items; "
            f"chance Recall@1 (text→{examples.modality}) = 1/{metrics['num_items']} = {metrics['chance/R@1']:.4f}. "
            "Ties count against the model (pessimistic ranks)."
        )
    elif task == "zero_shot":
        metrics = evaluate_zero_shot(model, data, templates, class_names, label_column, item_column, batch_size,
                                     cache_dir=cache_dir, show_progress=show_progress)
        confusion, names = metrics["confusion_matrix"], metrics.get("class_names")
        notes.append(f"{metrics['num_samples']} items, {metrics['num_classes']} classes (chance top-1 = "
                     f"{metrics['chance/top1']:.4f}); templates: " + "; ".join(repr(t) for t in metrics["templates"]))
    else:
        others = [m for m in model.encoders if m != "text"]
        columns = {m: text_column if m == "text" else m for m in model.encoders}
        if item_column and len(others) == 1:  # --item-column names the one non-text modality's column
            columns[others[0]] = item_column
        metrics = evaluate_classification(model, data, batch_size, label_column, columns=columns, labels=class_names)
        confusion, names = metrics.get("confusion_matrix"), metrics.get("class_names")
    metrics = {"task": task, "data": os.path.abspath(data), **metrics, **(extra or {})}
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    write_report(output_dir, metrics, title=title or f"{task.replace('_', '-')} evaluation: {os.path.basename(data)}",
                 examples=examples, confusion=confusion, class_names=names, notes=notes, html=html)
    return metrics


def main(argv: Optional[list[str]] = None) -> int:
    """CLI: evaluate a saved model on a manifest and write metrics.json + report."""
    parser = argparse.ArgumentParser(prog="multimodal-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved model directory (config.json + model.safetensors)")
    parser.add_argument("--data", required=True, help="manifest (CSV/TSV/JSONL/Parquet)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--output", default=None, help="output directory (default: <model>/eval-<task>)")
    parser.add_argument("--templates", nargs="+", default=None,
                        help="zero-shot prompt templates with {} for the class name, or one file with a template per line")
    parser.add_argument("--classes", nargs="+", default=None,
                        help="class names (zero-shot: default = distinct labels; classification: the training label order)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--item-column", default=None, help="image/audio column (default: the modality name)")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--cache-dir", default=None, help="reuse/store the features of frozen (locked) encoders here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--html", action="store_true", help="also write report.html")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = load_model(args.model, args.device)
    classes = args.classes
    if args.task == "classification" and classes is None:
        classes = _saved_labels(args.model)
    output = args.output or os.path.join(args.model, f"eval-{args.task}")
    metrics = run_evaluation(model, args.data, args.task, output, templates=args.templates, class_names=classes,
                             batch_size=args.batch_size, text_column=args.text_column, item_column=args.item_column,
                             label_column=args.label_column, cache_dir=args.cache_dir, html=args.html)
    headline = {k: v for k, v in metrics.items() if isinstance(v, float) and "/" not in k or k.endswith(("R@1", "R@5", "R@10"))}
    print(json.dumps(headline, indent=1))
    print(f"wrote {os.path.join(output, 'metrics.json')} and {os.path.join(output, 'report.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
