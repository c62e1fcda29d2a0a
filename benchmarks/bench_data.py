"""Data pipeline headroom: examples/s of the data loader alone vs examples/s of training steps.

For each recipe's YAML defaults, and again with every encoder fine-tuned (no feature cache, so every
epoch decodes files and runs the encoders' preprocessing in the loader workers).
The loader is measured by iterating the recipe's own train DataLoader; training by running the
framework Trainer's step loop over batches the same loader produced (held in memory). The two
measurements alternate in one process. Target: loader / training >= 3.

    python benchmarks/bench_data.py [--batches 8] [--repeats 3] [--recipes text_image_classification,...]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import alternate, list_loader, machine_info, print_table, timed, trainer_epoch_runner, write_json  # noqa: E402, I001

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_RECIPES = "text_image_classification,text_audio_classification,image_text_retrieval,audio_text_retrieval,image_audio_retrieval"


def overrides_for(recipe: str, setting: str) -> list[str]:
    """`default`: the recipe's YAML as is. `fine-tune`: every encoder trains, no feature cache, 2 workers."""
    if setting == "default":
        return []
    return ["model.freeze_encoders=false", "data.feature_cache=null", "data.num_workers=2"]


def setup(recipe: str, overrides: list[str], out_dir: str):
    """Model and train loader exactly as the recipe builds them for its config plus `overrides`."""
    from multimodal import get_task, load_config
    from multimodal.tasks import build_loaders

    cfg = load_config(os.path.join(ROOT, "recipes", "configs", f"{recipe}.yaml"), overrides)
    cfg.train.output_dir = out_dir
    if cfg.data.feature_cache == "auto":
        cfg.data.feature_cache = os.path.join(out_dir, "features")
    task = get_task(cfg.model.task)(cfg)
    splits = task.build_splits(progress=False)
    model = task.build_model(splits)
    return cfg, model, build_loaders(task, model, splits, progress=False)["train"]


def measure(recipe: str, setting: str, batches: int, repeats: int) -> dict:
    """One recipe/setting row."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg, model, loader = setup(recipe, overrides_for(recipe, setting), tmp)
        n = min(batches, len(loader))
        held = list(itertools.islice(iter(loader), n))
        examples = sum(len(b["index"]) for b in held)

        def load() -> float:
            it = iter(loader)  # includes worker start-up, as every epoch pays it without persistent workers
            return timed(lambda: [next(it) for _ in range(n)])

        train = trainer_epoch_runner(
            model, list_loader(held), os.path.join(tmp, "run"), progress_bar=False,
            encoder_lr=cfg.train.encoder_lr, head_lr=cfg.train.head_lr,
        )
        train()  # warm-up
        times = alternate({"loader": load, "training": train}, repeats)
    loader_s = sorted(times["loader"])[len(times["loader"]) // 2]
    train_s = sorted(times["training"])[len(times["training"]) // 2]
    return {
        "recipe": recipe,
        "setting": setting,
        "workers": cfg.data.num_workers,
        "batch": cfg.train.batch_size,
        "loader_ex_per_s": examples / loader_s,
        "train_ex_per_s": examples / train_s,
        "headroom": train_s / loader_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipes", default=ALL_RECIPES)
    parser.add_argument("--settings", default="default,fine-tune")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for recipe in args.recipes.split(","):
        for setting in args.settings.split(","):
            rows.append(measure(recipe, setting, args.batches, args.repeats))
            print(f"  {recipe} [{setting}]: headroom {rows[-1]['headroom']:.2f}x", flush=True)
    print(f"machine: {machine_info()}")
    print_table("Data pipeline headroom (target >= 3x)", rows, list(rows[0]))
    write_json(args.json, {"data_headroom": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
