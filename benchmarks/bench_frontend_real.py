"""audio-mel front ends compared on real recordings, side by side in one run.

Each variant's frozen `audio-mel:tf_efficientnet_lite0` features (benchmarks/features.py) are scored with the
scikit-learn reference (benchmarks/sklearn_probe.py): StandardScaler + LogisticRegression() and
StandardScaler + LogisticRegressionCV, 5-fold stratified cross-validation grouped by Freesound recording /
speaker, on a fixed label-stratified subset of each real audio set (`--per-set` clips; the CPU budget of a
2-core machine decides the size).

    export MULTIMODAL_DEVSETS=/work/devsets   # built by benchmarks/devsets_real.py
    PYTHONPATH=$PWD python benchmarks/bench_frontend_real.py --per-set 800 --json /tmp/frontend_real.json
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch

from benchmarks.common import machine_info, print_table, write_json
from benchmarks.devsets_real import build
from benchmarks.devsets_sources import CLIP_SECONDS
from benchmarks.features import extract, subset_manifest
from benchmarks.sklearn_probe import MODELS, cross_validated
from encoders import create_encoder
from multimodal.data.media import load_audio

SPEC = "audio-mel:tf_efficientnet_lite0"
SETS = ("urbansound", "arabic_commands")
VARIANTS = {
    "64 mels, 25 ms, hop 10 ms, 224x224 (default before)": {"n_mels": 64, "n_fft": 400, "hop_length": 160},
    "128 mels, 25 ms, hop 10 ms, 224x224 (AST-like)": {"n_mels": 128, "n_fft": 400, "hop_length": 160},
    "128 mels, 1024-pt FFT, hop 10 ms, 224x224": {"n_mels": 128, "n_fft": 1024, "hop_length": 160},
    "64 mels, 1024-pt FFT, hop 10 ms, 224x224 (PANNs-like)": {"n_mels": 64, "n_fft": 1024, "hop_length": 160},
    "128 mels, 1024-pt FFT, hop 20 ms, 224x224": {"n_mels": 128, "n_fft": 1024, "hop_length": 320},
    "128 mels, 1024-pt FFT, hop 10 ms, native size": {"n_mels": 128, "n_fft": 1024, "hop_length": 160,
                                                      "resize": None},
    "128 mels, 1024-pt FFT, hop 10 ms, 224x224, global norm": {"n_mels": 128, "n_fft": 1024, "hop_length": 160,
                                                               "normalize": "global"},
}


@torch.no_grad()
def log_mel_stats(manifest: str, options: dict) -> list[float]:
    """Mean and std of the log-mel values (before normalisation) over the manifest's training rows."""
    encoder = create_encoder(SPEC, pretrained=False, **{**options, "normalize": "none"})
    table = pd.read_csv(manifest)
    base = os.path.dirname(manifest)
    values = []
    for path in table[table["split"] != "test"]["audio"]:
        inputs = encoder.preprocess([load_audio(path, base)])
        spec, real = encoder.frontend(inputs["waveform"], inputs["lengths"])
        values.append(spec[0, 0, :, : int(real[0])].flatten().numpy())
    allv = np.concatenate(values)
    return [float(allv.mean()), float(allv.std())]


def score_variant(manifest: str, options: dict, models: list[str]) -> list[dict]:
    """Feature extraction time plus the scikit-learn models' cross-validated accuracy for one variant."""
    start = time.perf_counter()
    feats = extract(manifest, SPEC, options)
    extract_s = time.perf_counter() - start
    groups = feats["group"] if np.any(feats["group"] != "") else None
    rows = []
    for model in models:
        result = cross_validated(model, feats["X"], feats["label"], groups)
        rows.append({"model": model, "acc": f"{100 * result['cv_mean']:.1f} +- {100 * result['cv_std']:.1f}",
                     "cv_mean": result["cv_mean"], "folds": result["folds"], "fit_s": result["fit_s"],
                     "features_s": extract_s, "C": result["C"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-set", type=int, default=800, help="clips per set (label-stratified subset)")
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    parser.add_argument("--variants", nargs="*", default=None, help="variant indices to run, in this order (default: all)")
    parser.add_argument("--models", nargs="*", default=["LogisticRegression()"], choices=MODELS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    names = list(VARIANTS)
    chosen = names if args.variants is None else [names[int(i)] for i in args.variants]
    manifests = {name: subset_manifest(build(name), args.per_set) for name in args.sets}
    results = []
    for variant in chosen:  # variants outermost: an interrupted run still compares both sets
        for set_name, manifest in manifests.items():
            options = {**VARIANTS[variant], "max_seconds": CLIP_SECONDS[set_name]}
            if options.get("normalize") == "global":
                options["norm_stats"] = log_mel_stats(manifest, options)
            for row in score_variant(manifest, options, args.models):
                first = next((r for r in results if r["set"] == set_name and r["model"] == row["model"]), row)
                gain = 100 * (np.array(row["folds"]) - np.array(first["folds"]))  # same folds: a paired difference
                row["vs first"] = f"{gain.mean():+.1f} +- {gain.std():.1f}"
                results.append({"set": set_name, "variant": variant, **row})
                print(results[-1], flush=True)
    print_table(f"audio-mel front ends, {args.per_set} clips per set, 5-fold grouped CV", results,
                ["set", "variant", "model", "acc", "vs first", "C", "features_s", "fit_s"])
    write_json(args.json, {"machine": machine_info(), "per_set": args.per_set, "results": results})


if __name__ == "__main__":
    main()
