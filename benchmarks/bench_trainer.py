"""Trainer overhead: the framework's training loop vs a minimal hand-written Accelerate loop.

Both loops train identical copies of the same model on the same pre-collated batches (so data
loading is excluded), with the same optimiser, LR schedule and gradient clipping, alternating in
one process over several repeats. Target: framework / hand-written <= 1.05.

    python benchmarks/bench_trainer.py [--model packaged|tiny] [--steps 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import (  # noqa: E402
    alternate,
    list_loader,
    machine_info,
    print_table,
    summarise,
    timed,
    trainer_epoch_runner,
    write_json,
)


def build_model(kind: str):
    """The default recipe's model (packaged MiniLM + EfficientNet-Lite0, concat fusion) or a tiny one."""
    from encoders import create_encoder
    from fusion import create_fusion
    from multimodal import MultimodalModel, TaskHead

    torch.manual_seed(0)
    if kind == "packaged":
        encs = {
            "text": create_encoder("text:sentence-transformers/all-MiniLM-L6-v2", max_length=32),
            "image": create_encoder("image:tf_efficientnet_lite0", img_size=128),
        }
    else:
        encs = {
            "text": create_encoder("text:sentence-transformers/all-MiniLM-L6-v2", max_length=32),
            "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=64),
        }
    dims = {m: e.output_dim for m, e in encs.items()}
    fusion = create_fusion("concat", dims, 256)
    return MultimodalModel(encs, fusion=fusion, head=TaskHead(256, 4))


def make_batches(model, n: int, batch_size: int) -> list[dict]:
    """Pre-collated batches of random captions and images, with labels."""
    import numpy as np
    from PIL import Image

    from multimodal.data import Collator

    rng = np.random.default_rng(0)
    words = "red green blue circle square digit one two three small large photo of a the".split()
    collate = Collator(model.get_preprocessors(train=False), "single_label")
    batches = []
    for b in range(n):
        samples = []
        for i in range(batch_size):
            samples.append(
                {
                    "text": " ".join(rng.choice(words, size=12)),
                    "image": Image.fromarray(rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)),
                    "label": int(rng.integers(0, 4)),
                    "index": b * batch_size + i,
                }
            )
        batches.append(collate(samples))
    return batches


def handwritten_runner(model, batches: list) -> object:
    """Return a callable that runs the same epoch in a minimal hand-written Accelerate loop."""
    import math

    from accelerate import Accelerator

    acc = Accelerator(mixed_precision="no")
    groups = model.parameter_groups(2e-5, 1e-3, 0.01)
    opt = torch.optim.AdamW(groups, lr=1e-3)
    total = 1000 * len(batches)
    warmup = int(0.1 * total)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    model, opt, loader = acc.prepare(model, opt, list_loader(batches))
    sched = torch.optim.lr_scheduler.LambdaLR(opt.optimizer, lr_lambda)
    params = list(model.parameters())
    model.train()

    def epoch() -> None:
        for batch in loader:
            out = model(inputs=batch["inputs"], present=batch["present"], labels=batch["labels"])
            acc.backward(out.loss)
            acc.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)

    return lambda: timed(epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["packaged", "tiny"], default="packaged")
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    base = build_model(args.model)
    batches = make_batches(base, args.steps, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        runners = {
            "handwritten": handwritten_runner(copy.deepcopy(base), batches),
            "framework": trainer_epoch_runner(copy.deepcopy(base), list_loader(batches), tmp),
        }
        for run in runners.values():  # warm-up epoch each (allocator, first-call costs)
            run()
        times = alternate(runners, args.repeats)
    summary = summarise(times, "handwritten")
    rows = [
        {
            "loop": name,
            "median_s_per_epoch": s["median_s"],
            "ms_per_step": 1000 * s["median_s"] / args.steps,
            "ratio_to_handwritten": s["ratio_to_handwritten"],
        }
        for name, s in summary.items()
    ]
    print(f"machine: {machine_info()}")
    print(f"model={args.model} steps/epoch={args.steps} batch={args.batch_size} repeats={args.repeats}")
    print_table("Trainer overhead (target ratio <= 1.05)", rows, list(rows[0]))
    write_json(args.json, {"trainer_overhead": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
