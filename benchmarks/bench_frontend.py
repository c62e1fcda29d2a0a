"""Front ends that match their backbones: audio-mel mel bins / resizing / normalisation, and image sizes.

Each variant is scored the same way: the framework's linear probe (`train.linear_probe=true`, C chosen on
validation, refit on train+validation) on the variant's frozen features, test accuracy on held-out data.

    PYTHONPATH=$PWD python benchmarks/bench_frontend.py --json /tmp/frontend.json
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.common import machine_info, print_table, write_json
from benchmarks.devsets import build

AUDIO_VARIANTS = {
    "64 mels, native 64x101 (old default)": {"n_mels": 64, "n_fft": 400, "resize": None},
    "128 mels (n_fft 1024), native": {"n_mels": 128, "n_fft": 1024, "resize": None},
    "64 mels, resized to 224x224": {"n_mels": 64, "n_fft": 400, "resize": "pretrained"},
    "128 mels (n_fft 1024), resized to 224x224": {"n_mels": 128, "n_fft": 1024, "resize": "pretrained"},
    "128 mels, 224x224, global normalisation": {"n_mels": 128, "n_fft": 1024, "resize": "pretrained", "normalize": "global"},
}
IMAGE_VARIANTS = {"64 px": 64, "112 px": 112, "224 px (pretrained_cfg)": 224}


def probe_accuracy(manifest: str, modality: str, encoder_kwargs: dict, out_dir: str) -> dict:
    """Test accuracy of the framework's linear probe with these encoder kwargs."""
    from multimodal import run
    from multimodal.config import load_config

    spec = {"image": "image:tf_efficientnet_lite0", "audio": "audio-mel:tf_efficientnet_lite0"}[modality]
    overrides = [
        f"data.train={manifest}", "data.split_column=split", "data.text_column=null",
        f"data.image_column={'image' if modality == 'image' else 'null'}",
        f"data.audio_column={'audio' if modality == 'audio' else 'null'}", "data.num_workers=0",
        f"model.encoders={{{modality}: '{spec}'}}", "model.freeze_encoders=true", "train.linear_probe=true",
        f"train.output_dir={out_dir}", "train.log_with=none", "train.progress_bar=false", "eval.html_report=false",
    ]
    cfg = load_config(None, overrides)
    cfg.model.encoder_kwargs = {modality: dict(encoder_kwargs)}
    start = time.time()
    metrics = run(cfg)
    return {"test_accuracy": metrics["test"]["accuracy"], "C": metrics["probe"]["C"], "seconds": time.time() - start}


def global_stats(manifest: str, kwargs: dict) -> list[float]:
    """Mean and std of the log-mel values over the training clips (for normalize='global')."""
    import pandas as pd
    import soundfile as sf
    import torch

    from encoders import create_encoder

    enc = create_encoder("audio-mel:tf_efficientnet_lite0", **{**kwargs, "normalize": "none"})
    table = pd.read_csv(manifest)
    rows = table[table["split"] == "train"]["audio"].tolist()
    base = os.path.dirname(manifest)
    values = []
    with torch.no_grad():
        for path in rows:
            wave, sr = sf.read(os.path.join(base, path), dtype="float32")
            inputs = enc.preprocess([(wave, sr)])
            spec, real = enc.frontend(inputs["waveform"], inputs["lengths"])
            values.append(spec[0, 0, :, : int(real[0])].flatten().numpy())
    allv = np.concatenate(values)
    return [float(allv.mean()), float(allv.std())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=os.path.expanduser("~/.cache/multimodal-finetune/devsets"))
    parser.add_argument("--out", default="/tmp/bench_frontend")
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", choices=["audio", "image"], default=None)
    args = parser.parse_args()
    results: dict = {"audio": [], "image": []}
    if args.only in (None, "audio"):
        manifest = build("spoken", args.root)
        for name, kwargs in AUDIO_VARIANTS.items():
            kwargs = {**kwargs, "max_seconds": 1.0}
            if kwargs.get("normalize") == "global":
                kwargs["norm_stats"] = global_stats(manifest, kwargs)
            row = {"dev set": "spoken", "variant": name, **probe_accuracy(manifest, "audio", kwargs, args.out)}
            print(row, flush=True)
            results["audio"].append(row)
        print_table("audio-mel front end (spoken words, held-out speakers)", results["audio"],
                    ["dev set", "variant", "test_accuracy", "C", "seconds"])
    if args.only in (None, "image"):
        manifest = build("mnist", args.root)
        for name, size in IMAGE_VARIANTS.items():
            row = {"dev set": "mnist", "variant": name, **probe_accuracy(manifest, "image", {"img_size": size}, args.out)}
            print(row, flush=True)
            results["image"].append(row)
        print_table("image size (MNIST)", results["image"], ["dev set", "variant", "test_accuracy", "C", "seconds"])
    write_json(args.json, {"machine": machine_info(), **results})


if __name__ == "__main__":
    main()
