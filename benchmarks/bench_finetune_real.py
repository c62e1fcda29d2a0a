"""Fine-tuning methods against the probe and scikit-learn on the real dev sets (issue 18), on fixed subsets.

Every run goes through the public path (`multimodal.run` with key=value overrides, as the recipes take them),
each in its own process so its peak RSS is its own. Per set: a fixed subset (label-stratified, seed 0) of
``--train`` training rows, ``--val`` validation rows and ``--test`` test rows of the set's own splits (unseen
speakers / recordings stay unseen), written beside the set's manifest; the packaged EfficientNet-Lite0 at
``--size`` pixels (images: ``img_size``; audio-mel: the log-mel resized to size x size).

Methods (``base`` then ``+modifier``s, e.g. ``full+bntrain``, ``full+lr3e-4``, ``lora+noaug``):

* ``sklearn``: StandardScaler + LogisticRegression() and + LogisticRegressionCV on the same frozen features
  (benchmarks/features.py, same encoder options), fitted on train + validation, scored on the test rows;
* ``probe`` (train.linear_probe), ``frozen_head`` (MLP head on cached features, early stopping);
* ``lora`` (r=8, LR 1e-3), ``last2`` (model.unlock_last_blocks: 2), ``full`` (every encoder weight),
  ``lpft_lora`` / ``lpft_full`` (the same from the fitted probe, train.probe_init);
* modifiers: ``bntrain`` (train.freeze_norm_stats=false), ``lr<value>`` (train.encoder_lr), ``noaug`` (no
  augmentation), ``mixup`` (data.augment.mixup_alpha=0.2), ``nospec`` (audio: no SpecAugment masks),
  ``crop<seconds>`` (audio: max_seconds, so training crops a random window of longer clips), ``poolnone`` /
  ``poolall`` (the encoder's pool_stages: [] / "all").

    export MULTIMODAL_DEVSETS=/work/devsets
    PYTHONPATH=$PWD python benchmarks/bench_finetune_real.py --sets arabic_commands --methods sklearn probe lora full
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import pandas as pd

from benchmarks.bench_sklearn_baseline import encoder_options
from benchmarks.common import machine_info, print_table, run_child
from benchmarks.devsets_real import build
from benchmarks.devsets_sources import CLIP_SECONDS

POOL_STAGES = {"poolnone": [], "poolall": "all"}  # modifiers: the encoder's pool_stages
MODALITY = {"urbansound": "audio", "arabic_commands": "audio", "trashnet": "image", "sign_digits": "image"}
SPECS = {"image": "image:tf_efficientnet_lite0", "audio": "audio-mel:tf_efficientnet_lite0"}
AUGMENT = {  # the fine-tune presets' augmentation
    "image": ["data.augment.image_scale=[0.7, 1.0]", "data.augment.image_hflip=0.0", "data.augment.image_color_jitter=0.0"],
    "audio": ["data.augment.audio_gain_db=6.0", "data.augment.audio_shift_seconds=0.1",
              "data.augment.spec_freq_masks=2", "data.augment.spec_time_masks=2"],
}
TRAINED = ["model.freeze_encoders=false", "data.feature_cache=null", "train.head_lr=1.0e-3", "train.warmup_ratio=0.1",
           "train.batch_size=32", "model.head_dropout=0.1", "train.freeze_norm_stats=true"]  # bntrain: false
METHODS = {
    "probe": ["model.freeze_encoders=true", "train.linear_probe=true"],
    "frozen_head": ["model.freeze_encoders=true", "model.head_hidden_dim=128", "train.epochs=30", "train.head_lr=2.0e-3",
                    "train.early_stopping_patience=6"],
    "lora": [*TRAINED, "model.peft.r=8", "model.peft.alpha=16", "train.encoder_lr=1.0e-3"],
    "last2": [*TRAINED, "model.unlock_last_blocks.{m}=2", "train.encoder_lr=3.0e-4"],
    "full": [*TRAINED, "train.encoder_lr=1.0e-4"],
    "lpft_lora": [*TRAINED, "model.peft.r=8", "model.peft.alpha=16", "train.encoder_lr=1.0e-3", "train.probe_init=true"],
    "lpft_full": [*TRAINED, "train.encoder_lr=1.0e-4", "train.probe_init=true"],
}


def subset(name: str, n_train: int, n_val: int, n_test: int, seed: int = 0) -> str:
    """A fixed label-stratified subset of each split of the set, written beside its manifest (reused)."""
    from sklearn.model_selection import train_test_split

    manifest = build(name)
    out = os.path.join(os.path.dirname(manifest), f"finetune_subset_{n_train}_{n_val}_{n_test}_{seed}.csv")
    if os.path.exists(out):
        return out
    table = pd.read_csv(manifest)
    parts = []
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        rows = table[table["split"] == split]
        if n < len(rows):
            rows, _ = train_test_split(rows, train_size=n, stratify=rows["label"], random_state=seed)
        parts.append(rows)
    pd.concat(parts).sort_index().to_csv(out, index=False)
    return out


def encoder_kwargs(name: str, size: int) -> dict:
    """Encoder options of the set at `size` pixels (the defaults spelled out, so feature-cache keys name them)."""
    if MODALITY[name] == "image":
        return {**encoder_options(name, "image"), "img_size": size}
    return {**encoder_options(name, "audio"), "max_seconds": CLIP_SECONDS[name], "resize": [size, size]}


def overrides(name: str, method: str, manifest: str, out: str, size: int, epochs: int) -> list[str]:
    """The run's key=value overrides (as `recipes/*.py --config ... key=value` takes them)."""
    m = MODALITY[name]
    base, *mods = method.split("+")
    kwargs = encoder_kwargs(name, size)
    items = [f"data.train={manifest}", "data.split_column=split", "data.text_column=null",
             f"data.image_column={'image' if m == 'image' else 'null'}", f"data.audio_column={'audio' if m == 'audio' else 'null'}",
             "data.num_workers=0", f"data.feature_cache={os.path.join(os.path.dirname(out), 'cache', name)}",
             f"model.encoders={{{m}: '{SPECS[m]}'}}", f"train.output_dir={out}", "train.log_with=none",
             "train.progress_bar=false", "train.save_checkpoints=false", "eval.html_report=false", "train.seed=0"]
    items += [f"model.encoder_kwargs.{m}.{k}={json.dumps(v)}" for k, v in kwargs.items()]
    items += [o.replace("{m}", m) for o in METHODS[base]]
    trained = base not in ("probe", "frozen_head")
    if trained:
        items.append(f"train.epochs={epochs}")
        if "noaug" not in mods:
            items += [a for a in AUGMENT[m] if not ("nospec" in mods and "spec_" in a)]
    for mod in mods:
        if mod == "bntrain":
            items.append("train.freeze_norm_stats=false")
        elif mod.startswith("lr"):
            items.append(f"train.encoder_lr={float(mod[2:])}")
        elif mod == "mixup":
            items.append("data.augment.mixup_alpha=0.2")
        elif mod in POOL_STAGES:
            items.append(f"model.encoder_kwargs.{m}.pool_stages={json.dumps(POOL_STAGES[mod])}")
        elif mod.startswith("crop"):
            items.append(f"model.encoder_kwargs.audio.max_seconds={float(mod[4:])}")
        elif mod not in ("noaug", "nospec"):
            raise SystemExit(f"unknown modifier {mod!r} in method {method!r}")
    return items


def sklearn_rows(name: str, manifest: str, size: int) -> dict:
    """Both scikit-learn references on the frozen features of the same encoder options."""
    from benchmarks.features import extract
    from benchmarks.sklearn_probe import MODELS, fixed_split

    feats = extract(manifest, SPECS[MODALITY[name]], encoder_kwargs(name, size))
    row: dict = {"features_s": float(feats["seconds"])}
    for model in MODELS:
        fixed = fixed_split(model, feats)
        row[f"{model} test_accuracy"] = fixed["test_acc"]
        row[f"{model} C"] = fixed["C"]
    row["test_accuracy"] = row["LogisticRegression() test_accuracy"]
    return row


def one(name: str, method: str, workdir: str, size: int, epochs: int, counts: tuple[int, int, int]) -> dict:
    """Run one (set, method) in this process and describe it."""
    from multimodal import run
    from multimodal.config import load_config

    manifest = subset(name, *counts)
    out = os.path.join(workdir, f"{name}_{method}")
    start = time.time()
    if method == "sklearn":
        row = sklearn_rows(name, manifest, size)
    else:
        cfg = load_config(None, overrides(name, method, manifest, out, size, epochs) + ["train.overwrite_output_dir=true"])
        metrics = run(cfg)
        row = {"test_accuracy": metrics["test"]["accuracy"], "epochs_run": metrics.get("epochs_run"),
               "best_epoch": metrics.get("best_epoch"), "train_time_s": metrics.get("train_time_s"),
               "trainable_encoder_params": metrics["parameters"]["encoders_trainable"]}
        for key in ("probe", "probe_init"):
            if key in metrics:
                row["C"] = metrics[key].get("C")
    row.update({"set": name, "method": method, "wall_s": round(time.time() - start, 1),
                "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "subset": "/".join(map(str, counts)), "size": size, "epochs": epochs})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="*", default=list(MODALITY), choices=list(MODALITY))
    parser.add_argument("--methods", nargs="*", default=["sklearn", "probe", "frozen_head", "lora", "last2", "full",
                                                         "full+bntrain", "lpft_full"])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/bench_finetune_real")
    parser.add_argument("--json", default=None, help="append each result as one JSON line")
    parser.add_argument("--one", nargs=2, metavar=("SET", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = (args.train, args.val, args.test)
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print("RESULT " + json.dumps(one(*args.one, args.workdir, args.size, args.epochs, counts)), flush=True)
        return
    rows = []
    for name in args.sets:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--one", name, method, "--workdir", args.workdir, "--size", str(args.size),
                   "--epochs", str(args.epochs), "--threads", str(args.threads), "--train", str(args.train),
                   "--val", str(args.val), "--test", str(args.test)]
            row = run_child(cmd, f"{name} {method}")
            if row is None:
                continue
            rows.append(row)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({**row, "machine": machine_info()}) + "\n")
    print_table("fine-tuning on real dev sets (test accuracy)", rows,
                ["set", "method", "test_accuracy", "epochs_run", "best_epoch", "wall_s", "peak_rss_MiB"])


if __name__ == "__main__":
    main()
