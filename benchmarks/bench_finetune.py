"""Fine-tuning methods side by side on real-material dev sets (CPU, packaged EfficientNet-Lite0 weights).

Per dev set and method: test accuracy, trainable encoder parameters, saved model file size, peak RSS and
seconds per epoch. Each run is its own process (so peak RSS is its own), started from this script in turn:

    PYTHONPATH=$PWD python benchmarks/bench_finetune.py --json /tmp/finetune.json
    PYTHONPATH=$PWD python benchmarks/bench_finetune.py --devsets mnist --methods probe lora full

Methods: ``sklearn`` (StandardScaler + LogisticRegression on the framework's cached features: C=1 as a user
would write it, and C chosen on validation by macro-F1 as the probe chooses it, or by accuracy, then refit on
train+validation, like the probe), ``frozen_head``
(the recipes' concat fusion + MLP head on cached features), ``probe`` (train.linear_probe), ``lora`` (r=8,
family default targets), ``last2`` (model.unlock_last_blocks: 2), ``full`` (every encoder weight), ``lpft_lora`` / ``lpft_full`` (the same, started
from the fitted probe: train.probe_init), each trained method also ``+ema`` (train.ema_decay=0.998).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

from benchmarks.common import machine_info, print_table, run_child
from benchmarks.devsets import MODALITY, build

SPECS = {"image": "image:tf_efficientnet_lite0", "audio": "audio-mel:tf_efficientnet_lite0"}
# Per dev set: encoder kwargs and the training augmentation of the fine-tuning preset.
DEVSET = {
    "mnist": {"kwargs": {"img_size": 64}, "augment": ["data.augment.image_scale=[0.7, 1.0]", "data.augment.image_hflip=0.0",
                                                      "data.augment.image_color_jitter=0.0"]},
    "digits": {"kwargs": {"img_size": 64}, "augment": ["data.augment.image_scale=[0.7, 1.0]", "data.augment.image_hflip=0.0",
                                                       "data.augment.image_color_jitter=0.0"]},
    "spoken": {"kwargs": {"max_seconds": 1.0}, "augment": ["data.augment.audio_gain_db=6.0", "data.augment.audio_shift_seconds=0.1",
                                                           "data.augment.spec_freq_masks=2", "data.augment.spec_time_masks=2"]},
}
FINETUNE = ["model.freeze_encoders=false", "data.feature_cache=null", "train.epochs=6", "train.head_lr=1.0e-3",
            "train.warmup_ratio=0.1", "train.batch_size=32", "model.head_dropout=0.1"]
METHODS = {
    "frozen_head": ["model.freeze_encoders=true", "model.head_hidden_dim=128", "train.epochs=30", "train.head_lr=2.0e-3",
                    "train.early_stopping_patience=6"],
    "probe": ["model.freeze_encoders=true", "train.linear_probe=true"],
    "lora": [*FINETUNE, "model.peft.r=8", "model.peft.alpha=16", "train.encoder_lr=1.0e-3"],
    "last2": [*FINETUNE, "model.unlock_last_blocks.{m}=2", "train.encoder_lr=3.0e-4"],
    "full": [*FINETUNE, "train.encoder_lr=3.0e-4"],
    # LP-FT: the same fine-tuning, started from the fitted linear probe (train.probe_init)
    "lpft_lora": [*FINETUNE, "model.peft.r=8", "model.peft.alpha=16", "train.encoder_lr=1.0e-3", "train.probe_init=true"],
    "lpft_full": [*FINETUNE, "train.encoder_lr=3.0e-4", "train.probe_init=true"],
}
EMA = ["train.ema_decay=0.998"]


def overrides(devset: str, method: str, manifest: str, out: str, cache: str) -> list[str]:
    """The run's config overrides."""
    m = MODALITY[devset]
    base = method.removesuffix("+ema")
    items = [f"data.train={manifest}", "data.split_column=split", "data.text_column=null",
             f"data.image_column={'image' if m == 'image' else 'null'}", f"data.audio_column={'audio' if m == 'audio' else 'null'}",
             "data.num_workers=0", f"data.feature_cache={cache}", f"model.encoders={{{m}: '{SPECS[m]}'}}",
             f"train.output_dir={out}", "train.log_with=none", "train.progress_bar=false", "train.save_checkpoints=false",
             "eval.html_report=false", "train.seed=0"]
    items += [o.replace("{m}", m) for o in METHODS[base]]
    if base in ("lora", "last2", "full", "lpft_lora", "lpft_full"):
        items += DEVSET[devset]["augment"]
    if method.endswith("+ema"):
        items += EMA
    return items


def sklearn_baselines(devset: str, manifest: str, cache: str, out: str) -> dict:
    """scikit-learn logistic regression on the framework's own cached (frozen) features."""
    import numpy as np
    from accelerate import Accelerator
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from multimodal import get_task
    from multimodal.config import load_config
    from multimodal.tasks import build_loaders
    from multimodal.training.methods import prepare_model
    from multimodal.training.probe import DEFAULT_CS, collect_features

    cfg = load_config(None, overrides(devset, "probe", manifest, out, cache))
    cfg.model.encoder_kwargs = {MODALITY[devset]: DEVSET[devset]["kwargs"]}
    task = get_task(cfg.model.task)(cfg)
    splits = task.build_splits(progress=False)
    model = prepare_model(task.build_model(splits), cfg, task.label_type)
    loaders = build_loaders(task, model, splits, progress=False)
    acc = Accelerator(cpu=True)
    feats = {k: collect_features(model, loaders[k], acc) for k in ("train_eval", "validation", "test")}
    x = {k: v["raw"].numpy().astype(np.float64) for k, v in feats.items()}
    y = {k: v["labels"].numpy() for k, v in feats.items()}

    def fit(xs, ys, c):
        scaler = StandardScaler().fit(xs)
        return scaler, LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(xs), ys)

    scaler, clf = fit(x["train_eval"], y["train_eval"], 1.0)
    default = float((clf.predict(scaler.transform(x["test"])) == y["test"]).mean())
    from sklearn.metrics import f1_score

    def select(score) -> float:  # C with the best validation score; ties keep the smaller C, as the probe does
        best_c, best = None, -1.0
        for c in DEFAULT_CS:
            scaler, clf = fit(x["train_eval"], y["train_eval"], c)
            val = score(y["validation"], clf.predict(scaler.transform(x["validation"])))
            if val > best:
                best, best_c = val, c
        return best_c

    def refit_test(c: float) -> float:
        scaler, clf = fit(np.concatenate([x["train_eval"], x["validation"]]),
                          np.concatenate([y["train_eval"], y["validation"]]), c)
        return float((clf.predict(scaler.transform(x["test"])) == y["test"]).mean())

    best_c = select(lambda t, p: f1_score(t, p, average="macro"))  # the probe's selection metric
    acc_c = select(lambda t, p: float((t == p).mean()))
    tuned, by_accuracy = refit_test(best_c), refit_test(acc_c)
    return {"test_accuracy": tuned, "C": best_c, "sklearn_C1_test_accuracy": default,
            "selected_by_accuracy_test_accuracy": by_accuracy, "C_by_accuracy": acc_c}


def one(devset: str, method: str, root: str, workdir: str) -> dict:
    """Run one (dev set, method) in this process and describe it."""
    from multimodal import run
    from multimodal.config import load_config

    manifest = build(devset, root)
    cache = os.path.join(workdir, "cache", devset)
    out = os.path.join(workdir, f"{devset}_{method}")
    start = time.time()
    if method == "sklearn":
        row = sklearn_baselines(devset, manifest, cache, out)
    else:
        cfg = load_config(None, overrides(devset, method, manifest, out, cache))
        cfg.model.encoder_kwargs = {MODALITY[devset]: DEVSET[devset]["kwargs"]}
        metrics = run(cfg)
        params = metrics["parameters"]
        epochs = max(1, metrics["epochs_run"] or 1)
        weights = os.path.join(out, "model", "model.safetensors")
        row = {"test_accuracy": metrics["test"]["accuracy"], "trainable_encoder_params": params["encoders_trainable"],
               "encoder_params": params["encoders_total"], "trainable_fraction": params["encoders_trainable_fraction"],
               "model_file_MiB": round(os.path.getsize(weights) / 2**20, 3), "s_per_epoch": metrics["train_time_s"] / epochs,
               "epochs_run": metrics["epochs_run"], "best_epoch": metrics["best_epoch"]}
        if "probe" in metrics or "probe_init" in metrics:
            row["C"] = (metrics.get("probe") or metrics["probe_init"])["C"]
    row.update({"devset": devset, "method": method, "wall_s": round(time.time() - start, 1),
                "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=os.path.expanduser("~/.cache/multimodal-finetune/devsets"))
    parser.add_argument("--workdir", default="/tmp/bench_finetune")
    parser.add_argument("--devsets", nargs="*", default=["mnist", "spoken"])
    parser.add_argument("--methods", nargs="*", default=["probe", "sklearn", "frozen_head", "lora", "last2", "full",
                                                         "full+ema", "lora+ema", "last2+ema"])
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=2, metavar=("DEVSET", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one[0], args.one[1], args.root, args.workdir)), flush=True)
        return
    rows = []
    for devset in args.devsets:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--one", devset, method, "--root", args.root, "--workdir", args.workdir]
            row = run_child(cmd, f"{devset} {method}")
            if row is None:
                continue
            rows.append(row)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"machine": machine_info(), "rows": rows}, f, indent=2)
    print_table("fine-tuning methods", rows, ["devset", "method", "test_accuracy", "trainable_encoder_params",
                                              "trainable_fraction", "model_file_MiB", "peak_rss_MiB", "s_per_epoch",
                                              "epochs_run"])


if __name__ == "__main__":
    main()
