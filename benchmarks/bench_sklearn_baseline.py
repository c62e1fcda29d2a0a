"""The scikit-learn reference on the packaged encoders, per real dev set: the baseline later changes must beat.

For every set: frozen features from the framework's own encoders at their defaults (benchmarks/features.py;
one per media column, concatenated for text+image sets), then StandardScaler + LogisticRegression() and
StandardScaler + LogisticRegressionCV (default Cs, stratified 5-fold, grouped by the set's group column):
- "fixed split": fit on train + validation, accuracy on the set's test split (unseen speakers / recordings);
- "5-fold CV": mean +- std of held-out accuracy over 5 stratified (grouped) folds of all rows.

    export MULTIMODAL_DEVSETS=/work/devsets   # built by benchmarks/devsets_real.py
    PYTHONPATH=$PWD python benchmarks/bench_sklearn_baseline.py --json /tmp/sklearn_baseline.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import machine_info, print_table, write_json
from benchmarks.devsets_real import build
from benchmarks.devsets_sources import CLIP_SECONDS, SOURCES
from benchmarks.features import extract, modality_specs, subset_manifest
from benchmarks.sklearn_probe import MODELS, cross_validated, fixed_split
from encoders._timm import DEFAULT_POOL_STAGES
from encoders.audio_mel import DEFAULT_HOP_LENGTH, DEFAULT_N_FFT, DEFAULT_N_MELS


def encoder_options(set_name: str, modality: str, pool_stages: str | list[int] | None = None) -> dict:
    """Encoder options: the defaults, spelled out (so the cache key names them, and a changed default never reads
    features cached under the old one): pool_stages (default: the encoder's), and for audio-mel the mel settings
    with the set's clip length as max_seconds."""
    if modality not in ("image", "audio"):
        return {}
    stages = DEFAULT_POOL_STAGES if pool_stages is None else pool_stages  # "all" or a list of feature_info stages
    options: dict = {"pool_stages": stages if isinstance(stages, str) else list(stages)}
    if modality == "image":
        return options
    return {"n_mels": DEFAULT_N_MELS, "n_fft": DEFAULT_N_FFT, "hop_length": DEFAULT_HOP_LENGTH,
            "max_seconds": CLIP_SECONDS.get(set_name, 5.0), **options}


def set_features(name: str, manifest: str, only: tuple[str, ...] = ()) -> tuple[dict, dict[str, str], float]:
    """Features of every media column (or of the `only` ones; concatenated in text, image, audio order), the
    specs used, seconds."""
    specs = {m: spec for m, spec in modality_specs(manifest).items() if not only or m in only}
    start = time.perf_counter()
    parts = [extract(manifest, spec, encoder_options(name, modality)) for modality, spec in specs.items()]
    feats = dict(parts[0])
    feats["X"] = np.concatenate([p["X"] for p in parts], axis=1)
    return feats, specs, time.perf_counter() - start


def media_views(manifest: str, ablate: bool) -> list[tuple[str, ...]]:
    """The media-column combinations to score: all columns together, and with `ablate` each column alone first."""
    columns = tuple(modality_specs(manifest))
    return ([(c,) for c in columns] if ablate and len(columns) > 1 else []) + [columns]


def run_set(name: str, models: list[str], cv: bool, per_set: int | None, ablate: bool = False) -> list[dict]:
    """Both protocols for each model on one dev set (or its fixed label-stratified subset of `per_set` rows), on
    all media columns concatenated and, with `ablate`, on each column alone."""
    manifest = build(name) if per_set is None else subset_manifest(build(name), per_set)
    return [row for view in media_views(manifest, ablate) for row in run_view(name, manifest, view, models, cv)]


def run_view(name: str, manifest: str, view: tuple[str, ...], models: list[str], cv: bool) -> list[dict]:
    """Both protocols for each model on the features of the media columns in `view`."""
    feats, specs, seconds = set_features(name, manifest, view)
    groups = feats["group"] if np.any(feats["group"] != "") else None
    rows = []
    for model in models:
        fixed = fixed_split(model, feats)
        row = {"set": name, "encoders": " + ".join(specs.values()), "model": model,
               "fixed split": f"{100 * fixed['test_acc']:.1f}", "C": fixed["C"], "fit_s": fixed["fit_s"],
               "features_s": seconds, "rows": len(feats["label"])}
        if cv:
            folds = cross_validated(model, feats["X"], feats["label"], groups)
            row["5-fold CV"] = f"{100 * folds['cv_mean']:.1f} +- {100 * folds['cv_std']:.1f}"
            row["cv_fit_s"] = folds["fit_s"]
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", nargs="*", default=list(SOURCES))
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--per-set", type=int, default=None,
                        help="use the fixed label-stratified subset of this many rows (as bench_frontend_real.py)")
    parser.add_argument("--no-cv", action="store_true", help="only the fixed split (skip the 5-fold CV)")
    parser.add_argument("--ablate", action="store_true",
                        help="on paired sets, also score each media column alone (text-only, image-only, ...)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = [row for name in args.sets
               for row in run_set(name, args.models, not args.no_cv, args.per_set, args.ablate)]
    scope = "all rows" if args.per_set is None else f"{args.per_set}-row subsets"
    print_table(f"scikit-learn reference on the packaged encoders, {scope} (test accuracy %)", results,
                ["set", "encoders", "model", "fixed split", "5-fold CV", "C", "features_s", "fit_s", "cv_fit_s"])
    write_json(args.json, {"machine": machine_info(), "results": results})


if __name__ == "__main__":
    main()
