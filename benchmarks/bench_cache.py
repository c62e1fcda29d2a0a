"""Feature cache: epoch time with frozen towers read from the on-disk cache vs recomputed every epoch.

Uses a classification recipe's defaults (frozen pretrained encoders). "uncached" runs the encoders'
preprocessing and forward pass on every batch; "cached" reads their features from the cache that
the first build filled (that one-time fill is reported separately). Whole epochs, data loading
included, alternate in one process. Target: uncached / cached >= 10.

    python benchmarks/bench_cache.py [--recipe text_image_classification] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_data import setup  # noqa: E402
from common import alternate, machine_info, print_table, trainer_epoch_runner, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="text_image_classification")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="loader workers for the uncached run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "features")
        start = time.perf_counter()
        _, cached_model, cached_loader = setup(args.recipe, [f"data.feature_cache={cache}"], tmp)
        fill_s = time.perf_counter() - start
        _, plain_model, plain_loader = setup(
            args.recipe, ["data.feature_cache=null", f"data.num_workers={args.workers}"], tmp
        )
        examples = len(plain_loader.dataset)
        runners = {
            "uncached": trainer_epoch_runner(plain_model, plain_loader, os.path.join(tmp, "u"), progress_bar=False),
            "cached": trainer_epoch_runner(cached_model, cached_loader, os.path.join(tmp, "c"), progress_bar=False),
        }
        for run in runners.values():
            run()  # warm-up
        times = alternate(runners, args.repeats)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    rows = [
        {"run": k, "epoch_s": med[k], "examples_per_s": examples / med[k], "speedup": med["uncached"] / med[k]}
        for k in ("uncached", "cached")
    ]
    print(f"machine: {machine_info()}")
    print(f"recipe={args.recipe} train examples={examples}; cache build (setup incl. one encoding pass) {fill_s:.1f}s")
    print_table("Feature cache (target speedup >= 10x)", rows, list(rows[0]))
    write_json(args.json, {"feature_cache": rows, "cache_setup_s": fill_s, "args": vars(args)})


if __name__ == "__main__":
    main()
