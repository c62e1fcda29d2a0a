"""Encoder inference: throughput and peak memory of each packaged encoder, batch 1 and 32, fp32 and bf16.

Each configuration runs in its own subprocess so that peak resident memory is measured per
configuration (CPU has no allocator statistics like `torch.cuda.max_memory_allocated`).

    python benchmarks/bench_encoders.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_info, print_table, write_json  # noqa: E402

ENCODERS = {
    "text:sentence-transformers/all-MiniLM-L6-v2": "text",
    "image:tf_efficientnet_lite0": "image",
    "audio-mel:tf_efficientnet_lite0": "audio",
}


def _raw_batch(modality: str, batch: int) -> list:
    import numpy as np

    rng = np.random.default_rng(0)
    if modality == "text":
        words = "a small red bird sits on the old wooden fence near the quiet river at dawn".split()
        return [" ".join(rng.choice(words, size=24)) for _ in range(batch)]
    if modality == "image":
        from PIL import Image

        return [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)) for _ in range(batch)]
    return [(rng.standard_normal(16000 * 5).astype("float32") * 0.1, 16000) for _ in range(batch)]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(spec: str, batch: int, dtype: str, repeats: int) -> dict:
    """Measure one configuration in this process and return its row."""
    import torch

    from encoders import create_encoder

    torch.manual_seed(0)
    encoder = create_encoder(spec).eval()
    inputs = encoder.preprocess(_raw_batch(encoder.modality, batch))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    with torch.inference_mode(), autocast:
        encoder(inputs)  # warm-up
        rss_before = _rss_mib()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder(inputs)
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    best = sorted(times)[len(times) // 2]
    return {
        "encoder": spec,
        "batch": batch,
        "dtype": dtype,
        "samples_per_s": batch / best,
        "ms_per_batch": best * 1000,
        "peak_rss_mib": peak,
        "rss_after_warmup_mib": rss_before,
        "params_m": sum(p.numel() for p in encoder.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write results here")
    parser.add_argument("--one", nargs=3, metavar=("SPEC", "BATCH", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        spec, batch, dtype = args.one
        print(json.dumps(run_one(spec, int(batch), dtype, args.repeats)))
        return

    rows = []
    for spec in ENCODERS:
        for batch in (1, 32):
            for dtype in ("fp32", "bf16"):
                cmd = [sys.executable, __file__, "--repeats", str(args.repeats), "--one", spec, str(batch), dtype]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  {spec} batch={batch} {dtype}: {rows[-1]['samples_per_s']:.1f} samples/s", flush=True)
    # bf16 speed relative to fp32 at the same batch size.
    for r in rows:
        ref = next(x for x in rows if x["encoder"] == r["encoder"] and x["batch"] == r["batch"] and x["dtype"] == "fp32")
        r["speed_vs_fp32"] = r["samples_per_s"] / ref["samples_per_s"]
    print(f"\nmachine: {machine_info()}")
    print_table(
        "Encoder inference (CPU)",
        rows,
        ["encoder", "batch", "dtype", "samples_per_s", "ms_per_batch", "speed_vs_fp32", "peak_rss_mib", "params_m"],
    )
    write_json(args.json, {"encoder_inference": rows})


if __name__ == "__main__":
    main()
