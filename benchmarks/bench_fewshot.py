"""Few-shot classification with a two-tower model: prompt-initialised head vs random head vs zero-shot.

The two-tower model is the image-text retrieval recipe's (trained first, on the demo's training items, unless
``--towers DIR`` gives one). Each candidate then runs the few_shot_classification recipe config through the
runner on the same demo (same splits, so the test images were never seen by the towers or the heads):
``zero-shot`` is the prompt head untrained (``train.epochs=0``); ``prompts`` and ``random`` fine-tune the
class weights, the projection and the temperature on K images per class (frozen, cached image tower), with
K-shot validation for model selection, over several shot samples (``data.shots_seed``).

    python benchmarks/bench_fewshot.py [--shots 1 4 16] [--seeds 0 1 2 3 4] [--epochs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_info, print_table, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "recipes", "configs")


def towers(out: str) -> str:
    """Train the image-text retrieval recipe's two-tower model; returns its model folder."""
    from multimodal import load_config, run

    run(load_config(os.path.join(CONFIGS, "image_text_retrieval.yaml"),
                    [f"train.output_dir={out}", "train.progress_bar=false", "train.log_with=none"]))
    return os.path.join(out, "model")


def few_shot(model_dir: str, out: str, overrides: list[str]) -> dict:
    """One run of the few-shot recipe config; returns its test metrics."""
    from multimodal import load_config, run

    cfg = load_config(os.path.join(CONFIGS, "few_shot_classification.yaml"),
                      [f"model.init_from={model_dir}", f"train.output_dir={out}", "train.progress_bar=false",
                       "train.log_with=none", "eval.html_report=false", *overrides])
    return run(cfg)["test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="shot samples (data.shots_seed)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--towers", default=None, help="a saved two-tower model (default: train the retrieval recipe)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a shared machine's other jobs make more threads spin, not compute)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.towers or towers(os.path.join(tmp, "towers"))
        zs = few_shot(model_dir, os.path.join(tmp, "zero-shot"), ["train.epochs=0"])
        rows.append({"K": "-", "head": "zero-shot", "runs": 1, "accuracy": zs["accuracy"], "accuracy_std": 0.0,
                     "macro_f1": zs["macro_f1"], "test_examples": zs["num_examples"]})
        print(rows[-1], flush=True)
        for k in args.shots:
            for init in ("prompts", "random"):
                results = [few_shot(model_dir, os.path.join(tmp, f"k{k}-{init}-s{s}"),
                                    [f"data.shots_per_class={k}", f"data.shots_seed={s}", f"model.classifier_init={init}",
                                     f"train.epochs={args.epochs}"]) for s in args.seeds]
                acc = [r["accuracy"] for r in results]
                rows.append({"K": k, "head": f"{init}-initialised", "runs": len(results), "accuracy": statistics.fmean(acc),
                             "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                             "macro_f1": statistics.fmean(r["macro_f1"] for r in results),
                             "test_examples": results[0]["num_examples"]})
                print(rows[-1], flush=True)
    print(f"machine: {machine_info()}")
    print(f"args: {vars(args)}")
    print_table("Few-shot image classification on the image-text demo (10 digit classes, test split)", rows, list(rows[0]))
    write_json(args.json, {"rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
