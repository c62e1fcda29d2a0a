"""Gradient caching (``train.gradient_cache``): peak memory and step time of one two-tower training step, plain
vs cached, at growing contrastive batches, on the packaged encoders (all-MiniLM-L6-v2 + EfficientNet-Lite0).

Each (mode, batch) step runs in its own process, so its peak RSS (``ru_maxrss``, minus the process's RSS after
the model is built and the batch made) is its own; the step time is the step alone. Both modes train every
weight of both towers (the memory that gradient caching saves is the towers' activations). "Largest batch under
the cap" is the largest measured batch whose step stayed under ``--cap-gib`` of activation memory.

    PYTHONPATH=$PWD python benchmarks/bench_gradcache.py --batches 16 32 64 128 --chunk 16 --img-size 160
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, print_table  # noqa: E402


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_step(mode: str, batch: int, chunk: int, img_size: int) -> dict:
    """One training step in this process; its activation memory (peak RSS over the RSS before it) and seconds."""
    import numpy as np
    import torch
    from accelerate import Accelerator

    from encoders import create_encoder
    from multimodal.models.dual import DualEncoder
    from multimodal.training.gradcache import GradientCache

    torch.manual_seed(0)
    model = DualEncoder({"text": create_encoder("text:sentence-transformers/all-MiniLM-L6-v2", max_length=32),
                         "image": create_encoder("image:tf_efficientnet_lite0", img_size=img_size)}, embed_dim=256)
    model.eval()  # dropout off and BatchNorm on its running statistics (as train.freeze_norm_stats keeps it):
    # then both modes compute the same loss, so the table shows memory and time of one and the same step
    rng = np.random.default_rng(0)
    words = "a photo of the red green small big cat dog boat tree on in with".split()
    texts = [" ".join(rng.choice(words, size=8)) for _ in range(batch)]
    images = [rng.integers(0, 256, (img_size, img_size, 3), dtype=np.uint8) for _ in range(batch)]
    data = model.preprocess({"text": texts, "image": images})
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(model)
    before = _rss_mib()
    start = time.perf_counter()
    if mode == "cached":
        loss = GradientCache(chunk, accelerator).step(model, data)
    else:
        loss = model(inputs=data["inputs"], present=data["present"]).loss
        accelerator.backward(loss)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "batch": batch, "loss": round(float(loss), 5), "step_s": round(seconds, 2),
            "activation_mib": round(peak - before, 1), "peak_rss_mib": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--chunk", type=int, default=16, help="train.contrastive_chunk_size of the cached mode")
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--cap-gib", type=float, default=2.0, help="activation-memory cap for 'largest batch'")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(one_step(args.worker[0], int(args.worker[1]), args.chunk, args.img_size)))
        return
    rows = []
    for batch in args.batches:
        for mode in ("plain", "cached"):  # interleaved: the machine's load drifts alike for both
            done = subprocess.run([sys.executable, __file__, "--worker", mode, str(batch), "--chunk", str(args.chunk),
                                   "--img-size", str(args.img_size)], capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode != 0:
                rows.append({"mode": mode, "batch": batch, "error": done.stderr.strip().splitlines()[-1][:120]})
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        pair = [r for r in rows[-2:] if "error" not in r]
        if len(pair) == 2:
            pair[1]["memory_ratio"] = round(pair[1]["activation_mib"] / max(pair[0]["activation_mib"], 1e-6), 3)
            pair[1]["time_ratio"] = round(pair[1]["step_s"] / pair[0]["step_s"], 3)
            pair[1]["loss_diff"] = abs(pair[1]["loss"] - pair[0]["loss"])
    print(json.dumps(machine_info()))
    print_table(f"gradient caching, chunk {args.chunk}, {args.img_size} px, every weight trained",
                rows, ["mode", "batch", "loss", "step_s", "activation_mib", "peak_rss_mib", "memory_ratio",
                       "time_ratio", "loss_diff"])
    cap = args.cap_gib * 1024
    for mode in ("plain", "cached"):
        fits = [r["batch"] for r in rows if r["mode"] == mode and "error" not in r and r["activation_mib"] <= cap]
        print(f"largest measured batch under {args.cap_gib:g} GiB of activations, {mode}: {max(fits) if fits else 'none'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
