"""Adversarial training vs plain training on the text-image demo: clean accuracy and robust accuracy under PGD.

Both candidates are the text-image recipe with the same settings: MiniLM frozen (cached), EfficientNet-Lite0
(ImageNet weights) fine-tuned at a small image size, concat fusion. "adversarial" adds
``train.adversarial: {method: pgd, epsilon, steps, on: [image]}`` (clean + adversarial copy per batch). Each
trained model's test split is then scored by the evaluate CLI's code path (`evaluate_manifest`) on clean
inputs and under a PGD attack on the pixels (``--eval-steps`` steps, random start, the same epsilon).
Targets: robust accuracy up by >= 20 points, clean accuracy down by <= 2 points.

    python benchmarks/bench_adversarial.py [--epochs 8] [--epsilon 0.03] [--img-size 32] [--seeds 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_info, print_table, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(name: str, out: str, args: argparse.Namespace, seed: int) -> dict:
    """Run the recipe config through the runner; returns its metrics."""
    from multimodal import load_config, run

    overrides = [
        f"train.output_dir={out}", f"train.epochs={args.epochs}", f"train.seed={seed}", f"data.split_seed={seed}",
        f"data.demo_size={args.demo_size}", "model.freeze_encoders=[text]",
        f"model.encoder_kwargs.image.img_size={args.img_size}", f"train.encoder_lr={args.encoder_lr}",
        "train.save_checkpoints=false", "train.progress_bar=false", "eval.baselines=false", "train.log_with=none",
        "train.early_stopping_patience=null",
    ]
    if name == "adversarial":
        overrides.append(f"train.adversarial={{method: pgd, epsilon: {args.epsilon}, steps: {args.train_steps}, "
                         f"on: [image], mix: true}}")
    cfg = load_config(os.path.join(ROOT, "recipes", "configs", "text_image_classification.yaml"), overrides)
    return run(cfg)


def score(model_dir: str, test_csv: str, args: argparse.Namespace) -> dict:
    """Clean and PGD metrics of a saved model on a manifest, through the evaluate CLI's function."""
    from multimodal import load_model
    from multimodal.config import AdversarialConfig
    from multimodal.evaluation.cli import evaluate_manifest, saved_labels

    attack = AdversarialConfig(method="pgd", epsilon=args.epsilon, steps=args.eval_steps, on=["image"])
    result = evaluate_manifest(load_model(model_dir), test_csv, "classification", class_names=saved_labels(model_dir),
                               attack=attack, show_progress=False)
    return result.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--demo-size", type=int, default=1000)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--encoder-lr", type=float, default=1e-3)
    parser.add_argument("--epsilon", type=float, default=0.03, help="L-inf radius in [0, 1] pixel units")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a shared machine's other jobs make more threads spin, not compute)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.output or tmp
        for seed in args.seeds:
            for name in ("plain", "adversarial"):
                out = os.path.join(base, f"{name}-s{seed}")
                start, cpu = time.perf_counter(), time.process_time()
                metrics = train(name, out, args, seed)
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                scored = score(os.path.join(out, "model"), os.path.join(out, "splits", "test.csv"), args)
                assert abs(scored["accuracy"] - metrics["test"]["accuracy"]) < 1e-9  # the CLI reproduces the run
                rows.append({"seed": seed, "training": name, "test_examples": scored["num_examples"],
                             "clean_accuracy": scored["accuracy"], "robust_accuracy": scored["robust"]["accuracy"],
                             "train_wall_s": wall, "train_cpu_s": cpu})
                print(rows[-1], flush=True)
    summary = []
    for name in ("plain", "adversarial"):
        mine = [r for r in rows if r["training"] == name]
        summary.append({"training": name, "seeds": len(mine),
                        "clean_accuracy": sum(r["clean_accuracy"] for r in mine) / len(mine),
                        "robust_accuracy": sum(r["robust_accuracy"] for r in mine) / len(mine),
                        "train_wall_s": sum(r["train_wall_s"] for r in mine) / len(mine)})
    plain, adv = summary
    print(f"machine: {machine_info()}")
    print(f"args: {vars(args)}")
    print_table("Per run", rows, list(rows[0]))
    print_table("Mean over seeds", summary, list(summary[0]))
    robust_gain = 100 * (adv["robust_accuracy"] - plain["robust_accuracy"])
    clean_drop = 100 * (plain["clean_accuracy"] - adv["clean_accuracy"])
    print(f"\nrobust accuracy gain: {robust_gain:+.1f} points (target >= +20): {'met' if robust_gain >= 20 else 'MISSED'}")
    print(f"clean accuracy drop: {clean_drop:+.1f} points (target <= 2): {'met' if clean_drop <= 2 else 'MISSED'}")
    write_json(args.json, {"runs": rows, "summary": summary, "robust_gain_pts": robust_gain,
                           "clean_drop_pts": clean_drop, "args": vars(args)})


if __name__ == "__main__":
    main()
