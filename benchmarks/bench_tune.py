"""Hyper-parameter search with pruning vs without, same trial budget: best metric and total CPU time.

Every candidate runs `multimodal.tuning.tune` (what ``multimodal-tune`` runs) on the text-image recipe (frozen
MiniLM + EfficientNet-Lite0, cached features) with the same search space (recipes/spaces/text_image_classification.yaml),
the same number of trials and the same TPE seed, each in its own study. The feature cache is filled by a
warm-up run first, so no candidate pays for it. CPU time is this process's user + system time over the
search (all threads), so machine load from other jobs inflates it less than wall time. A study's best value
is the maximum over its trials, inflated by the luck of the trial's training seed, so each candidate's best
config is also retrained with other seeds (``--noise-seeds``): "within noise" means its mean validation
metric is within two standard errors of the difference from the no-pruning search's. Target: >= 2x less CPU
time with a best metric within noise.

    python benchmarks/bench_tune.py [--trials 16] [--epochs 12] [--pruners none median successive_halving]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_info, print_table, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "recipes", "configs", "text_image_classification.yaml")
SPACE = os.path.join(ROOT, "recipes", "spaces", "text_image_classification.yaml")


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def base_config(epochs: int) -> dict:
    """The recipe YAML with the benchmark's overrides, as a mapping."""
    from multimodal.config.loading import parse_overrides, read_config_file
    from multimodal.config.merge import deep_merge

    return deep_merge(read_config_file(CONFIG), parse_overrides([
        f"train.epochs={epochs}", "eval.baselines=false", "train.progress_bar=false", "train.log_with=none",
        "train.early_stopping_patience=null", "eval.html_report=false"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--startup-trials", type=int, default=4)
    parser.add_argument("--pruners", nargs="+", default=["none", "median", "successive_halving", "hyperband"])
    parser.add_argument("--noise-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=0, help="TPE seed, the same for every candidate")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a shared machine's other jobs make more threads spin, not compute)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from multimodal.config.loading import config_from_dict
    from multimodal.config.merge import deep_merge
    from multimodal.tasks.runner import run
    from multimodal.tuning.space import nested, read_space
    from multimodal.tuning.study import SearchSettings, tune

    base = base_config(args.epochs)
    space = read_space(SPACE, base)
    rows, summaries = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        warm = config_from_dict(deep_merge(base, {"train": {"epochs": 1, "output_dir": os.path.join(tmp, "warm")}}))
        run(warm)  # fills the feature cache for every candidate
        for pruner in args.pruners:
            out = os.path.join(tmp, pruner)
            settings = SearchSettings(out, args.trials, pruner=pruner, startup_trials=args.startup_trials, seed=args.seed,
                                      log=lambda line, p=pruner: print(f"[{p}] {line}", flush=True))
            start, cpu = time.perf_counter(), cpu_seconds()
            summary = tune(base, space, settings, CONFIG)
            wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            best = summary["best_trial"]
            summaries[pruner] = summary
            rows.append({"pruner": pruner, "trials": args.trials, "pruned": summary["trials"].get("pruned", 0),
                         "failed": summary["trials"].get("fail", 0), "best_val_macro_f1": best["value"],
                         "its_test_macro_f1": (best.get("test") or {}).get("macro_f1"), "cpu_s": cpu, "wall_s": wall})
            print(rows[-1], flush=True)
        retrained: dict[str, list[float]] = {}
        for row in rows:  # each search's best config, retrained with the same other seeds
            params = summaries[row["pruner"]]["best_trial"]["params"]
            retrained[row["pruner"]] = []
            for seed in args.noise_seeds:
                cfg = config_from_dict(deep_merge(deep_merge(base, nested(params)), {
                    "train": {"seed": seed, "output_dir": os.path.join(tmp, f"re-{row['pruner']}-{seed}")}}))
                retrained[row["pruner"]].append(run(cfg)["validation"]["macro_f1"])
            row["retrained_val_mean"] = statistics.fmean(retrained[row["pruner"]])
            row["retrained_val_std"] = statistics.stdev(retrained[row["pruner"]])
    reference = rows[0]
    for r in rows:
        r["cpu_ratio_vs_" + reference["pruner"]] = reference["cpu_s"] / r["cpu_s"]
        r["retrained_minus_" + reference["pruner"]] = r["retrained_val_mean"] - reference["retrained_val_mean"]
    print(f"machine: {machine_info()}")
    print(f"args: {vars(args)}")
    print_table("Search with and without pruning (same trials, same TPE seed)", rows, list(rows[0]))
    print(f"\nretrained with seeds {args.noise_seeds}: " + "; ".join(
        f"{p}: {[round(v, 4) for v in vals]}" for p, vals in retrained.items()))
    n = len(args.noise_seeds)
    for r in rows[1:]:
        se = ((r["retrained_val_std"] ** 2 + reference["retrained_val_std"] ** 2) / n) ** 0.5
        diff = r["retrained_minus_" + reference["pruner"]]
        within = abs(diff) <= 2 * se or diff >= 0
        fast = r["cpu_ratio_vs_" + reference["pruner"]] >= 2
        print(f"{r['pruner']}: {r['cpu_ratio_vs_' + reference['pruner']]:.2f}x less CPU time "
              f"({'met' if fast else 'MISSED'} >= 2x); retrained best config {diff:+.4f} vs {reference['pruner']} "
              f"(2 x standard error {2 * se:.4f}: {'within noise or better' if within else 'WORSE beyond noise'})")
    write_json(args.json, {"rows": rows, "retrained": retrained, "args": vars(args), "summaries": summaries})


if __name__ == "__main__":
    main()
