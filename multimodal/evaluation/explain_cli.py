"""``multimodal-explain``: why a saved classifier predicted what it did, on the rows of a manifest::

    multimodal-explain --model DIR --data MANIFEST --output DIR [--num-examples 8 | --rows 3 17 ...]
        [--target predicted|label] [--steps 32] [--text-column text] [--image-column image]
        [--audio-column audio] [--label-column label]

Reads the manifest into the same dataset the evaluate CLI uses (same checks, the training label order from
``labels.json``), then for every example: integrated gradients over image pixels, log-mel frames and text
tokens, exact Shapley contributions of the modalities through the presence masks, attention maps of the
attention fusion, and the deletion check (top-attributed vs random pixels/tokens). Writes ``report.html``
(heat maps, highlighted tokens), its PNGs and ``explanations.json``. See `multimodal.evaluation.explain`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Optional

from encoders import EncoderError
from multimodal.config.schema import ConfigError
from multimodal.data.dataset import DataError
from multimodal.data.loading import Collator
from multimodal.data.manifest import read_manifest
from multimodal.evaluation.cli import saved_labels, task_for
from multimodal.evaluation.explain import deletion_check, explain_batch
from multimodal.evaluation.explain_report import write_explain_report
from multimodal.models.base import load_model

DELETION = {"image": (0.01, "pixels"), "tokens": (0.2, "words")}
"""Fraction deleted in the deletion check, per attribution kind (scattered pixels: a small fraction already
moves a CNN a lot, so 1%; at least one word)."""


def _check(model: Any, batch: dict, exp: Any, seed: int) -> dict[str, Any]:
    out = {}
    for m, attr in exp.attributions.items():
        if attr.kind not in DELETION:
            continue
        fraction, unit = DELETION[attr.kind]
        p, top, rnd = deletion_check(model, batch, m, attr, exp.target, fraction, seed)
        out[m] = {"fraction": fraction, "unit": unit, "p": p, "p_top_deleted": top, "p_random_deleted": rnd}
    return out


def explain_manifest(model: Any, data: str, output: str, columns: dict[str, str], label_column: Optional[str],
                     class_names: Optional[list[str]], rows: Optional[list[int]] = None, num_examples: int = 8,
                     target: str = "predicted", steps: int = 32, seed: int = 0) -> str:
    """Explain examples of manifest `data` (1-based `rows`, or the first `num_examples`); returns the report path."""
    head = getattr(model, "head", None)
    if getattr(head, "label_type", None) != "single_label":
        raise ConfigError(f"multimodal-explain explains single-label classifiers; this model's head is "
                          f"{getattr(head, 'label_type', type(model).__name__)!r}")
    table = read_manifest(data)
    if label_column and table and label_column not in table[0]:
        if target == "label":
            raise DataError(f"{data}: --target label needs the label column {label_column!r}")
        label_column = None
    runner = task_for(model, "classification", columns, label_column)
    dataset = runner.dataset_from_rows(table, os.path.dirname(os.path.abspath(data)), data, class_names, progress=False)
    names = list(dataset.vocab.names) if dataset.vocab is not None else list(class_names or range(head.num_outputs))
    if len(names) != head.num_outputs:
        raise DataError(f"{data}: {len(names)} labels {names} but the model has {head.num_outputs} outputs; keep "
                        "labels.json next to the model (or in it)")
    by_row = {dataset.row_ids[i] + 1: pos for pos, i in enumerate(dataset.indices)}
    if rows:
        missing = [r for r in rows if r not in by_row]
        if missing:
            raise DataError(f"{data}: rows {missing} are not in the manifest (or were skipped); it has rows 1..{len(table)}")
        positions = [by_row[r] for r in rows]
    else:
        positions = list(range(min(num_examples, len(dataset))))
    collate = Collator(model.get_preprocessors(False), "single_label" if label_column else None)
    explanations, checks, sources = [], [], []
    for pos in positions:
        batch = collate([dataset[pos]])
        wanted = int(batch["labels"][0]) if target == "label" else None
        exp = explain_batch(model, batch, wanted, steps)
        explanations.append(exp)
        checks.append(_check(model, batch, exp, seed))
        sources.append(dataset.where(dataset.indices[pos]))
    notes = [f"{len(positions)} examples of {os.path.abspath(data)}; integrated gradients with {steps} steps, of the "
             f"{'true' if target == 'label' else 'predicted'} class's probability."]
    return write_explain_report(output, explanations, names, sources, checks, "Why the model predicted what it did", notes)


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry point; user errors exit with a one-line message, no traceback."""
    parser = argparse.ArgumentParser(prog="multimodal-explain", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="saved classifier directory")
    parser.add_argument("--data", required=True, help="manifest (CSV/TSV/JSONL/Parquet)")
    parser.add_argument("--output", required=True, help="report directory")
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="1-based manifest rows to explain")
    parser.add_argument("--num-examples", type=int, default=8, help="without --rows: the first N rows")
    parser.add_argument("--target", choices=("predicted", "label"), default="predicted",
                        help="explain the predicted class or the true label")
    parser.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
    parser.add_argument("--text-column", default="text", help="manifest column of the text")
    parser.add_argument("--image-column", default="image", help="manifest column of the image paths")
    parser.add_argument("--audio-column", default="audio", help="manifest column of the audio paths")
    parser.add_argument("--label-column", default="label", help="manifest column of the labels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random deletions")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.steps < 2 or args.num_examples < 1:
            raise ConfigError(f"--steps must be >= 2 and --num-examples >= 1 (got {args.steps}, {args.num_examples})")
        if not os.path.exists(os.path.join(args.model, "config.json")):
            raise DataError(f"{args.model!r} is not a saved model directory (no config.json)")
        model = load_model(args.model)
        columns = {"text": args.text_column, "image": args.image_column, "audio": args.audio_column}
        path = explain_manifest(model, args.data, args.output, columns, args.label_column, saved_labels(args.model),
                                args.rows, args.num_examples, args.target, args.steps, args.seed)
    except (ConfigError, DataError, EncoderError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {path} and {os.path.join(args.output, 'explanations.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
