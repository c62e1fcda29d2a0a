"""Pruning curve of the demo classifier: test accuracy / macro-F1 against sparsity, right after pruning and after a
short recovery fine-tune (`multimodal.deploy.prune.recover`, pruned weights held at zero).

    python benchmarks/bench_prune.py --model outputs/text_image_classification/model --recover-epochs 3

Magnitude pruning is global over every Linear / Conv weight of the model (MiniLM, EfficientNet-Lite0, fusion and
head) at 0-70% sparsity; structured points: attention heads of MiniLM and output channels of the encoders. The
recovery uses the training run's config.yaml (same data and splits; its frozen encoders stay frozen, so the
fusion and head adapt to the pruned encoders' features).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import print_table, write_json  # noqa: E402

from multimodal.config.loading import load_config  # noqa: E402
from multimodal.data.manifest import read_manifest  # noqa: E402
from multimodal.deploy.backends import TorchBackend  # noqa: E402
from multimodal.deploy.loading import load_source_model  # noqa: E402
from multimodal.deploy.predictor import Predictor  # noqa: E402
from multimodal.deploy.prune import prune_model, recover  # noqa: E402
from multimodal.evaluation.metrics import classification_metrics  # noqa: E402


def test_scores(model, labels: list[str], rows: list[dict], base: str) -> dict:
    preds = Predictor(TorchBackend(model, labels)).predict([{"text": r["text"], "image": r["image"]} for r in rows], base)
    probs = np.array([[p["probabilities"][n] for n in labels] for p in preds])
    y = torch.tensor([labels.index(str(r["label"])) for r in rows])
    m = classification_metrics(torch.from_numpy(np.log(probs + 1e-12)), y, "single_label")
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="outputs/text_image_classification/model")
    parser.add_argument("--recover-epochs", type=int, default=3)
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    load_start = os.getloadavg()
    torch.set_num_threads(args.threads)
    run_dir = os.path.dirname(os.path.abspath(args.model))
    test_csv = os.path.join(run_dir, "splits", "test.csv")
    rows, base = read_manifest(test_csv), os.path.dirname(test_csv)
    cfg = load_config(os.path.join(run_dir, "config.yaml"),
                      [f"train.epochs={args.recover_epochs}", "train.progress_bar=false", "eval.baselines=false",
                       "train.early_stopping_patience=null"])
    points = [("magnitude", "all", a) for a in args.amounts]
    points += [("heads", "encoders", 0.25), ("heads", "encoders", 0.5), ("channels", "encoders", 0.1),
               ("channels", "encoders", 0.3)]
    table = []
    for method, scope, amount in points:
        model, labels, _ = load_source_model(args.model)
        report = prune_model(model, amount, method, scope) if amount > 0 else {"sparsity": 0.0, "model_sparsity": 0.0}
        before = test_scores(model, labels, rows, base)
        after = recover(model, cfg, labels)["test"] if amount > 0 and args.recover_epochs else before
        table.append({"method": method, "scope": scope, "amount": amount, "pruned tensors sparsity": report["sparsity"],
                      "all weights sparsity": report["model_sparsity"], "accuracy": before["accuracy"],
                      "macro_f1": before["macro_f1"], "accuracy after recovery": after["accuracy"],
                      "macro_f1 after recovery": after["macro_f1"]})
        print(table[-1], flush=True)
    print_table("Pruning (test split)", table, list(table[0]))
    print(f"\nload average (1, 5, 15 min): start {load_start}, end {os.getloadavg()} on {os.cpu_count()} cores")
    write_json(args.json, {"rows": table, "args": vars(args), "load_average": {"start": load_start, "end": os.getloadavg()}})


if __name__ == "__main__":
    main()
