"""Richer frozen features from the same packaged encoder: pooled intermediate backbone stages against the default
pooled feature, scored by scikit-learn on the real dev sets' fixed 500-row subsets (issue 18).

For every set the packaged encoder (`audio-mel:tf_efficientnet_lite0` at the framework defaults with the set's
clip length, or `image:tf_efficientnet_lite0`) runs ONCE over the subset; forward hooks keep the global average
of each backbone stage's output (EfficientNet: the 7 `blocks.*` groups), beside the default `pooled` feature and
the global max of the final feature map (the encoder's tokens). The arrays are cached as .npz beside the dev sets
(`benchmarks.features.extract`, tag "stages"). Each variant (default; a stage alone; concatenations) is scored
with StandardScaler + LogisticRegression() and LogisticRegressionCV over the same 5 stratified folds (grouped by
the set's group column) as benchmarks/bench_probe.py, one BLAS thread; printed: accuracy mean +- sample std and
the paired per-fold difference to the default features (mean +- standard error).

    MULTIMODAL_DEVSETS=/work/devsets PYTHONPATH=$PWD python benchmarks/bench_stage_features.py --json /tmp/stages.json
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch

from benchmarks.bench_probe import paired
from benchmarks.bench_sklearn_baseline import encoder_options
from benchmarks.common import machine_info, print_table, write_json
from benchmarks.devsets_real import build
from benchmarks.devsets_sources import SOURCES
from benchmarks.features import extract, load_cells, modality_specs, subset_manifest
from benchmarks.sklearn_probe import MODELS, fit_score, folds

SETS = ("urbansound", "arabic_commands", "trashnet", "sign_digits")
# Feature variants: name -> the cached arrays concatenated ("pooled": the default; "max": global max of the final
# feature map; "blocks.i": the global average of stage i's output).
VARIANTS = {
    "default": ("pooled",),
    "blocks.3": ("blocks.3",),
    "blocks.4": ("blocks.4",),
    "blocks.5": ("blocks.5",),
    "blocks.6": ("blocks.6",),
    "default + blocks.6": ("pooled", "blocks.6"),
    "default + blocks.5-6": ("pooled", "blocks.5", "blocks.6"),
    "default + blocks.4-6": ("pooled", "blocks.4", "blocks.5", "blocks.6"),
    "default + all stages": ("pooled", *(f"blocks.{i}" for i in range(7))),
    # timm's feature_info stages of EfficientNet (what `forward_intermediates` returns): blocks 0, 1, 2, 4, 6
    "default + blocks.4,6": ("pooled", "blocks.4", "blocks.6"),
    "default + feature stages": ("pooled", "blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"),
    "max": ("max",),
    "default + max": ("pooled", "max"),
}


def stage_names(backbone: torch.nn.Module) -> list[str]:
    """Submodule names of the backbone's stages: `blocks.i` (EfficientNet-style) or timm's feature_info modules."""
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, torch.nn.Sequential):
        return [f"blocks.{i}" for i in range(len(blocks))]
    return [info["module"] for info in getattr(backbone, "feature_info", [])]


def _keep_mean(store: dict, name: str, _module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
    store[name] = output.float().mean(dim=(2, 3)) if output.ndim == 4 else output.float().mean(dim=1)


@torch.no_grad()
def stage_rows(encoder: torch.nn.Module, cells: list, column: str, base_dir: str,
               batch_size: int) -> dict[str, np.ndarray]:
    """One encoder pass: "pooled", "max" (final map) and each stage's global average, [N, D] arrays."""
    encoder.eval()
    names = stage_names(encoder.backbone)
    store: dict[str, torch.Tensor] = {}
    hooks = [encoder.backbone.get_submodule(n).register_forward_hook(partial(_keep_mean, store, n)) for n in names]
    chunks: dict[str, list] = {}
    try:
        for start in range(0, len(cells), batch_size):
            out = encoder(encoder.preprocess(load_cells(cells[start:start + batch_size], column, base_dir)))
            for key, value in {"pooled": out.pooled, "max": out.tokens.amax(dim=1), **store}.items():
                chunks.setdefault(key, []).append(value.float().numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return {key: np.concatenate(parts).astype(np.float32) for key, parts in chunks.items()}


def set_arrays(name: str, per_set: int) -> dict:
    """The cached stage arrays (+ label, split, group, seconds) of the set's fixed subset."""
    manifest = subset_manifest(build(name), per_set)
    (modality, spec), = modality_specs(manifest).items()
    return extract(manifest, spec, encoder_options(name, modality, pool_stages=[]), threads=2, outputs=stage_rows, tag="stages")


def score_variant(arrays: dict, parts: tuple[str, ...], model: str, splits: list, groups) -> list[float]:
    """Held-out accuracy per fold of `model` on the concatenated `parts`."""
    X = np.concatenate([arrays[p] for p in parts], axis=1)
    y = arrays["label"]
    return [fit_score(model, X[train], y[train], None if groups is None else groups[train], X[test], y[test])[0]
            for train, test in splits]


def run_set(name: str, per_set: int, models: list[str], variants: list[str]) -> list[dict]:
    """Every variant x model on one set: per-fold accuracies, paired difference to the default, seconds."""
    start = time.perf_counter()
    arrays = set_arrays(name, per_set)
    encode_s = time.perf_counter() - start
    groups = arrays["group"] if np.any(arrays["group"] != "") else None
    splits = folds(arrays["label"], groups)
    rows = []
    for model in models:
        base = score_variant(arrays, VARIANTS["default"], model, splits, groups)
        for variant in variants:
            start = time.perf_counter()
            accs = base if variant == "default" else score_variant(arrays, VARIANTS[variant], model, splits, groups)
            width = sum(arrays[p].shape[1] for p in VARIANTS[variant])
            pct = 100 * np.asarray(accs)
            rows.append({"set": name, "model": model, "variant": variant, "dim": width, "folds": accs,
                         "test acc %": f"{pct.mean():.1f} +- {pct.std(ddof=1):.1f}",
                         "vs default": "" if variant == "default" else paired(accs, base),
                         "fit_s": round(time.perf_counter() - start, 1), "encode_s": round(encode_s, 1)})
            print({k: v for k, v in rows[-1].items() if k != "folds"}, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SOURCES))
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--per-set", type=int, default=500, help="rows of each set's fixed stratified subset")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for name in args.sets for row in run_set(name, args.per_set, args.models, args.variants)]
    print_table(f"pooled backbone stages vs the default pooled feature, {args.per_set}-row subsets, 5 folds "
                "(test accuracy %; paired difference to default, mean +- standard error)", rows,
                ["set", "model", "variant", "dim", "test acc %", "vs default", "fit_s"])
    write_json(args.json, {"machine": machine_info(), "per_set": args.per_set, "variants": VARIANTS, "results": rows})


if __name__ == "__main__":
    main()
