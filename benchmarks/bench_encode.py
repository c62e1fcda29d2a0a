"""Encoding near the hardware: feature-cache fill on real photos and recordings, side by side in one process.

Images (TrashNet photos, 512x384 JPEG) through the packaged tf_efficientnet_lite0 weights:

* framework, before issue 21: the cache's fill path in NCHW fp32 (`multimodal.cache.encode` with its layout
  steps switched off, as it ran before);
* framework fp32: today's fill path with ``data.feature_cache_precision: fp32`` (channels_last);
* framework precision auto: ``data.feature_cache_precision: auto`` (channels_last, bf16 where the CPU has native
  bf16 and the features agree; the fill includes that one-off check: 8 items encoded in both precisions, the bf16
  ones kept);
* framework bf16: ``data.feature_cache_precision: bf16`` (no check): the steady state of a long fill;
* framework onnx: ``data.feature_cache_backend: onnx`` (ONNX Runtime, fp32, parity check on the first 8 items
  included): the steady state (the folder already holds the export, as every fill after the first) and a fill that
  exports the tower first; from the two, the export's cost and ORT's gain per item against torch fp32, i.e. the
  fill size from which ``auto`` exports (`multimodal.cache.ort.AUTO_MIN_ITEMS`);
* hand-written timm loops over the same backbone (decode with Pillow, timm's eval transform, forward):
  NCHW fp32, channels_last fp32, channels_last + bf16 autocast.

Recordings (UrbanSound8K clips, <= 4 s, 16 kHz) through ``audio-mel:tf_efficientnet_lite0``: the framework's fill
before vs now (torch fp32/auto/bf16, onnx). Then the fill's batch size: 8/16/32/64 for torch fp32 and onnx on photos. Each fill starts from an empty cache folder; candidates alternate, the median is reported with the
ratio to the framework's old path. Then a linear probe (StandardScaler + LogisticRegression, stratified 5-fold
repeated 4 times) on fp32 vs new-mode cached features (``--probe-mode``: onnx or auto) of a larger fixed subset:
accuracy difference in points.

Subsets are the fixed, label-stratified ``frontend_subset_500_0.csv`` files beside each manifest
(`benchmarks.features.subset_manifest`): all 500 photos for the probe, their first `--photos` / `--clips` rows
for the timing.

    python benchmarks/bench_encode.py [--photos 64] [--clips 32] [--probe-photos 500] [--repeats 2] [--threads 2]
        [--probe-mode onnx] [--skip decode images audio batch probe]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import alternate, machine_info, print_table, write_json  # noqa: E402
from benchmarks.features import subset_manifest  # noqa: E402
from encoders import create_encoder  # noqa: E402
from multimodal.cache import FeatureCache, native_bf16  # noqa: E402
from multimodal.cache import encode as encode_module  # noqa: E402
from multimodal.cache.ort import GRAPH_FILE, export_tower  # noqa: E402

DEVSETS = os.environ.get("MULTIMODAL_DEVSETS", "/work/devsets")
BATCH = 32
SUBSET = 500  # the fixed label-stratified subsets of BENCHMARKS.md section 10 (frontend_subset_500_0.csv)


@contextlib.contextmanager
def before_issue_21() -> Iterator[None]:
    """The cache's fill path as it ran before: no channels_last (weights or inputs); fp32 is asked separately."""
    with mock.patch.object(encode_module, "fill_layout", lambda encoder: contextlib.nullcontext()), \
            mock.patch.object(encode_module, "channels_last_inputs", lambda inputs: inputs):
        yield


def rows(manifest: str, first: int) -> tuple[list[str], list[str]]:
    """Absolute paths and labels of the first `first` rows of the fixed 500-row subset of `manifest`."""
    table = pd.read_csv(subset_manifest(manifest, SUBSET)).head(first)
    column = "image" if "image" in table.columns else "audio"
    base = os.path.dirname(manifest)
    return [os.path.join(base, p) for p in table[column]], table["label"].astype(str).tolist()


def framework_fill(encoder: torch.nn.Module, sources: list[str], precision: str, old: bool = False,
                   keep: dict | None = None, backend: str = "torch", graph: str | None = None,
                   batch: int = BATCH) -> float:
    """Seconds to fill an empty cache with `sources` on `backend` (with `graph`, that tower.onnx is in the folder
    already; features kept in `keep` under the precision used)."""
    with tempfile.TemporaryDirectory() as root, (before_issue_21() if old else contextlib.nullcontext()):
        cache = FeatureCache(encoder, root, store_tokens=False, precision=precision, backend=backend)
        if graph is not None:
            shutil.copy(graph, cache.directory / GRAPH_FILE)
        start = time.perf_counter()
        keys = cache.build(sources, batch_size=batch, show_progress=False)
        seconds = time.perf_counter() - start
        if backend != "torch" and cache.tower is None:
            raise RuntimeError(f"the {backend} fill ran in torch (see the log)")
        if keep is not None:
            keep["X"], keep["precision"] = cache.load(keys).pooled.numpy(), cache.precision
    return seconds


def exported(encoder: torch.nn.Module, folder: str) -> str:
    """Path of `encoder` exported as the cache's tower.onnx in `folder` (for the steady-state onnx fills)."""
    path = os.path.join(folder, f"{encoder.modality}-{GRAPH_FILE}")
    export_tower(encoder, path)
    return path


def onnx_candidates(encoder: torch.nn.Module, sources: list[str], graph: str) -> dict[str, Callable[[], float]]:
    """The framework's onnx fills: steady state (export in the folder) and with the export."""
    return {"framework onnx (steady state)": lambda: framework_fill(encoder, sources, "fp32", backend="onnx",
                                                                     graph=graph),
            "framework onnx incl. export": lambda: framework_fill(encoder, sources, "fp32", backend="onnx")}


def break_even(times: dict[str, list[float]], items: int) -> dict:
    """The export's cost, ORT's gain per item against torch fp32, and the fill size where the export is recovered."""
    median = {name: statistics.median(ts) for name, ts in times.items()}
    export_s = median["framework onnx incl. export"] - median["framework onnx (steady state)"]
    gain = (median["framework fp32 (channels_last)"] - median["framework onnx (steady state)"]) / items
    return {"export s": export_s, "gain s/item": gain, "break-even items": export_s / gain if gain > 0 else None}


def hand_loop(backbone: torch.nn.Module, paths: list[str], transform: Callable, layout: str, bf16: bool) -> float:
    """Seconds for a plain timm loop: Pillow decode, timm eval transform, forward (pooled features)."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    backbone = backbone.to(memory_format=fmt)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(paths), BATCH):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i:i + BATCH]])
            backbone(batch.contiguous(memory_format=fmt)).float()
    return time.perf_counter() - start


def rates(times: dict[str, list[float]], items: int, baseline: str, column: str = "vs framework before") -> list[dict]:
    """Median items/s per candidate and its ratio to `baseline` (in `column`)."""
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return [{"candidate": name, "items/s": items / m, column: medians[baseline] / m,
             "runs": len(times[name])} for name, m in medians.items()]


def image_race(args: argparse.Namespace, graph: str) -> tuple[list[dict], dict]:
    """Photos: the framework's fill (before, fp32, auto, bf16, onnx) and hand-written timm loops, alternating; and
    the onnx break-even."""
    import timm.data

    paths, _ = rows(os.path.join(DEVSETS, "trashnet", "manifest.csv"), args.photos)
    encoder = create_encoder("image:tf_efficientnet_lite0")
    backbone = copy.deepcopy(encoder.backbone).eval()  # the same packaged weights, outside the framework
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=backbone), is_training=False)
    candidates = {
        "framework before (NCHW fp32)": lambda: framework_fill(encoder, paths, "fp32", old=True),
        "framework fp32 (channels_last)": lambda: framework_fill(encoder, paths, "fp32"),
        "framework precision auto (bf16 if it agrees)": lambda: framework_fill(encoder, paths, "auto"),
        "framework bf16 (no check)": lambda: framework_fill(encoder, paths, "bf16"),
        "timm loop NCHW fp32": lambda: hand_loop(backbone, paths, transform, "nchw", False),
        "timm loop channels_last fp32": lambda: hand_loop(backbone, paths, transform, "channels_last", False),
        "timm loop channels_last bf16": lambda: hand_loop(backbone, paths, transform, "channels_last", True),
        **onnx_candidates(encoder, paths, graph),
    }
    framework_fill(encoder, paths[:BATCH], "fp32")  # warm-up: file hashes, allocator, oneDNN kernels
    times = alternate(candidates, args.repeats)
    return rates(times, len(paths), "framework before (NCHW fp32)"), break_even(times, len(paths))


def audio_race(args: argparse.Namespace, folder: str) -> tuple[list[dict], dict]:
    """Recordings: the framework's fill before vs now (audio-mel EfficientNet-Lite0), alternating."""
    paths, _ = rows(os.path.join(DEVSETS, "urbansound", "manifest.csv"), args.clips)
    encoder = create_encoder("audio-mel:tf_efficientnet_lite0")
    graph = exported(encoder, folder)
    candidates = {
        "framework before (NCHW fp32)": lambda: framework_fill(encoder, paths, "fp32", old=True),
        "framework fp32 (channels_last)": lambda: framework_fill(encoder, paths, "fp32"),
        "framework precision auto (bf16 if it agrees)": lambda: framework_fill(encoder, paths, "auto"),
        "framework bf16 (no check)": lambda: framework_fill(encoder, paths, "bf16"),
        **onnx_candidates(encoder, paths, graph),
    }
    framework_fill(encoder, paths[:BATCH], "fp32")
    times = alternate(candidates, args.repeats)
    return rates(times, len(paths), "framework before (NCHW fp32)"), break_even(times, len(paths))


def batch_sweep(args: argparse.Namespace, graph: str) -> list[dict]:
    """Photos: the fill's batch size (8/16/32/64) for torch fp32 and onnx (steady state), alternating."""
    paths, _ = rows(os.path.join(DEVSETS, "trashnet", "manifest.csv"), args.photos)
    encoder = create_encoder("image:tf_efficientnet_lite0")
    candidates = {}
    for batch in (8, 16, 32, 64):
        candidates[f"torch fp32, batch {batch}"] = lambda b=batch: framework_fill(encoder, paths, "fp32", batch=b)
        candidates[f"onnx, batch {batch}"] = lambda b=batch: framework_fill(encoder, paths, "fp32", backend="onnx",
                                                                            graph=graph, batch=b)
    framework_fill(encoder, paths[:BATCH], "fp32")
    return rates(alternate(candidates, args.repeats), len(paths), "torch fp32, batch 32", "vs torch fp32 batch 32")


def probe_features(args: argparse.Namespace) -> dict:
    """fp32 (the old fill path) and new-mode (`--probe-mode`: onnx or auto) cached features of the probe photos, with
    fill rates; or the ones `--save-features` wrote (`--probe-from`)."""
    if args.probe_from:
        with np.load(args.probe_from) as saved:
            return {"fp32": saved["fp32"], "new": saved["new"], "label": saved["label"], "precision": "saved"}
    paths, labels = rows(os.path.join(DEVSETS, "trashnet", "manifest.csv"), args.probe_photos)
    encoder = create_encoder("image:tf_efficientnet_lite0")
    fp32, new = {}, {}
    new_mode = {"precision": "fp32", "backend": "onnx"} if args.probe_mode == "onnx" else {"precision": "auto"}
    seconds = {"fp32": framework_fill(encoder, paths, "fp32", old=True, keep=fp32),
               "new": framework_fill(encoder, paths, keep=new, **new_mode)}
    if args.save_features:
        np.savez(args.save_features, fp32=fp32["X"], new=new["X"], label=np.asarray(labels))
    return {"fp32": fp32["X"], "new": new["X"], "label": np.asarray(labels),
            "precision": f"{new['precision']} ({args.probe_mode})",
            "fill_img_s_fp32_before": len(paths) / seconds["fp32"], "fill_img_s_new": len(paths) / seconds["new"]}


def probe(args: argparse.Namespace) -> dict:
    """Linear-probe accuracy on fp32 vs new-mode features of the same photos: stratified 5-fold, repeated 4 times
    (20 paired folds); the mean paired difference with its standard error, and how often the predictions agree."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    from benchmarks.sklearn_probe import make_model

    feats = probe_features(args)
    y = feats["label"]
    folds = RepeatedStratifiedKFold(n_splits=5, n_repeats=4, random_state=0).split(np.zeros(len(y)), y)
    acc: dict[str, list[float]] = {"fp32": [], "new": []}
    agree = []
    for train, test in folds:
        predicted = {}
        for name in acc:
            model = make_model("LogisticRegression()", y[train], None).fit(feats[name][train], y[train])
            predicted[name] = model.predict(feats[name][test])
            acc[name].append(float((predicted[name] == y[test]).mean()))
        agree.append(float((predicted["new"] == predicted["fp32"]).mean()))
    paired = 100 * (np.array(acc["new"]) - np.array(acc["fp32"]))
    a, b = torch.from_numpy(feats["fp32"]), torch.from_numpy(feats["new"])
    return {"photos": len(y), "new_mode_precision": feats["precision"], "acc_fp32": float(np.mean(acc["fp32"])),
            "acc_new": float(np.mean(acc["new"])), "difference_points": float(paired.mean()),
            "standard_error_points": float(paired.std(ddof=1) / np.sqrt(len(paired))),
            "predictions_agree": float(np.mean(agree)),
            "min_cosine": float(torch.nn.functional.cosine_similarity(a, b).min()),
            **{k: v for k, v in feats.items() if k.startswith("fill_")}}


def decode_race(repeats: int = 20) -> list[dict]:
    """JPEG decode + eval preprocessing, full vs drafted (`MediaLimits.image_draft_side`), on scikit-image's real
    photographs saved as JPEG (quality 90), for a 224 px and a 112 px model: ms per image and pixel difference."""
    import io

    import skimage.data
    import timm.data

    from encoders.image import ImagePreprocessor
    from multimodal.data.media import DEFAULT_LIMITS, image_draft_side, load_image

    out = []
    for photo in ("hubble_deep_field", "astronaut", "coffee"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, photo)()).save(buffer, "JPEG", quality=90)
        cell = {"bytes": buffer.getvalue()}
        for size in (224, 112):
            preprocess = ImagePreprocessor(timm.data.create_transform(input_size=(3, size, size), crop_pct=0.875,
                                                                      use_prefetcher=True), (3, size, size))
            drafted = DEFAULT_LIMITS.with_draft(image_draft_side({"image": preprocess}))
            runs = {name: (lambda lim=lim, pre=preprocess, c=cell: pre([load_image(c, limits=lim)])["pixel_values"])
                    for name, lim in (("full", DEFAULT_LIMITS), ("drafted", drafted))}
            times = alternate({n: (lambda f=f: _seconds(f)) for n, f in runs.items()}, repeats)
            diff = (runs["full"]().float() - runs["drafted"]().float()).abs()
            full_ms, draft_ms = (1000 * statistics.median(times[n]) for n in ("full", "drafted"))
            decoded = "x".join(map(str, load_image(cell, limits=drafted).size))
            out.append({"photo": photo, "model px": size, "decoded": decoded,
                        "full ms": full_ms, "drafted ms": draft_ms, "speed-up": full_ms / draft_ms,
                        "mean abs diff (of 255)": float(diff.mean())})
    return out


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=64, help="photos per timed fill (first rows of the subset)")
    parser.add_argument("--clips", type=int, default=32, help="recordings per timed fill")
    parser.add_argument("--probe-photos", type=int, default=SUBSET, help="photos for the probe (all 500: stratified)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=("images", "audio", "batch", "probe", "decode"))
    parser.add_argument("--probe-mode", choices=("onnx", "auto"), default="onnx",
                        help="the new mode the probe compares with the old fp32 path")
    parser.add_argument("--json", default=None)
    parser.add_argument("--save-features", default=None, help="write the probe's fp32 and new-mode features (.npz)")
    parser.add_argument("--probe-from", default=None, help="score the features --save-features wrote, no encoding")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"native bf16 here: {native_bf16('cpu')}; machine: {machine_info()}; "
          f"load average at start: {os.getloadavg()[0]:.1f}")
    result: dict = {}
    columns = ["candidate", "items/s", "vs framework before", "runs"]
    if "decode" not in args.skip:
        result["decode"] = decode_race()
        print_table("JPEG decode + eval preprocessing, full vs drafted", result["decode"], list(result["decode"][0]))
    with tempfile.TemporaryDirectory() as folder:
        if "images" not in args.skip or "batch" not in args.skip:
            graph = exported(create_encoder("image:tf_efficientnet_lite0"), folder)
        if "images" not in args.skip:
            result["images"], result["images_onnx_break_even"] = image_race(args, graph)
            print_table(f"Photos: cache fill, {args.photos} TrashNet JPEGs, batch {BATCH}", result["images"], columns)
            print_table("Photos: onnx export cost and break-even", [result["images_onnx_break_even"]],
                        list(result["images_onnx_break_even"]))
        if "audio" not in args.skip:
            result["audio"], result["audio_onnx_break_even"] = audio_race(args, folder)
            print_table(f"Recordings: cache fill, {args.clips} UrbanSound clips, batch {BATCH}", result["audio"],
                        columns)
            print_table("Recordings: onnx export cost and break-even", [result["audio_onnx_break_even"]],
                        list(result["audio_onnx_break_even"]))
        if "batch" not in args.skip:
            result["batch"] = batch_sweep(args, graph)
            print_table(f"Photos: fill batch size, {args.photos} TrashNet JPEGs", result["batch"],
                        ["candidate", "items/s", "vs torch fp32 batch 32", "runs"])
    if "probe" not in args.skip:
        result["probe"] = probe(args)
        print_table("Linear probe on cached features (20 paired folds)", [result["probe"]], list(result["probe"]))
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
