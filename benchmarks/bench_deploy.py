"""Inference side by side: PyTorch eager fp32, PyTorch eager int8 (torch.ao dynamic), ONNX Runtime fp32 and ONNX
Runtime int8 (dynamic), at batch 1 and 32, for the demo classifier and a two-tower model: latency, throughput,
file size, accuracy.

    python benchmarks/bench_deploy.py --classifier outputs/text_image_classification/model \\
        --towers outputs/image_text_retrieval/model --work /tmp/bench_deploy --json deploy.json

Make the two models first with the README's recipes (`recipes/text_image_classification.py`,
`recipes/image_text_retrieval.py`). Timing covers the model call on inputs preprocessed once (the same
preprocessed batch for every candidate of a backend); the candidates alternate over `--repeats` rounds and
each round times `--calls` calls at batch 1 or one call at batch 32. Accuracy is the test split's, through
the `Predictor` (decoding + each backend's own preprocessing). A two-tower "call" embeds one image batch and
one text batch.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import alternate, print_table, write_json  # noqa: E402

from multimodal.data.manifest import read_manifest  # noqa: E402
from multimodal.deploy.backends import TorchBackend  # noqa: E402
from multimodal.deploy.export import export_folder  # noqa: E402
from multimodal.deploy.loading import load_source_model  # noqa: E402
from multimodal.deploy.predictor import Predictor  # noqa: E402
from multimodal.deploy.quantize import graph_bytes, quantize_exported  # noqa: E402
from multimodal.evaluation.metrics import classification_metrics, retrieval_metrics  # noqa: E402


def torch_int8(model: torch.nn.Module) -> torch.nn.Module:
    """torch.ao dynamic int8 quantization of every nn.Linear (the PyTorch counterpart of ORT's dynamic quantizer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def state_bytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def candidates(model_dir: str, work: str, threads: int) -> dict[str, tuple[Predictor, int]]:
    """name -> (Predictor, model file bytes) for the five candidates (ORT int8 with and without Conv)."""
    name = os.path.basename(os.path.dirname(os.path.abspath(model_dir)))
    fp32, int8 = os.path.join(work, f"{name}-onnx"), os.path.join(work, f"{name}-onnx-int8")
    int8_conv = os.path.join(work, f"{name}-onnx-int8-conv")
    if not os.path.exists(os.path.join(fp32, "deploy.json")):
        export_folder(model_dir, fp32)
    if not os.path.exists(os.path.join(int8, "deploy.json")):
        quantize_exported(fp32, int8)
    if not os.path.exists(os.path.join(int8_conv, "deploy.json")):
        quantize_exported(fp32, int8_conv, op_types=("MatMul", "Gather", "Conv"))
    model, labels, _ = load_source_model(model_dir)
    quantized = torch_int8(load_source_model(model_dir)[0]).eval()
    return {
        "pytorch fp32": (Predictor(TorchBackend(model, labels)), os.path.getsize(os.path.join(model_dir, "model.safetensors"))),
        "pytorch int8 (torch.ao)": (Predictor(TorchBackend(quantized, labels)), state_bytes(quantized)),
        "onnxruntime fp32": (Predictor.from_pretrained(fp32, num_threads=threads), graph_bytes(fp32)),
        "onnxruntime int8": (Predictor.from_pretrained(int8, num_threads=threads), graph_bytes(int8)),
        "onnxruntime int8 + Conv": (Predictor.from_pretrained(int8_conv, num_threads=threads), graph_bytes(int8_conv)),
    }


def classifier_call(predictor: Predictor, samples: list[dict]):
    present = {m: np.array([s[m] is not None for s in samples]) for m in predictor.modalities}
    inputs = {m: predictor.backend.preprocess(m, [s[m] for s in samples]) for m in predictor.modalities}
    return lambda: predictor.backend.logits(inputs, present)


def towers_call(predictor: Predictor, images: list, texts: list):
    inputs = {"image": predictor.backend.preprocess("image", images), "text": predictor.backend.preprocess("text", texts)}
    return lambda: [predictor.backend.embed(m, x) for m, x in inputs.items()]


def time_calls(calls: dict, batch: int, repeats: int, n_calls: int) -> dict[str, float]:
    """Median seconds per call of each candidate, alternating."""
    for fn in calls.values():
        fn()  # warm-up

    def timer(fn):
        def run() -> float:
            import time

            start = time.perf_counter()
            for _ in range(n_calls if batch == 1 else 1):
                fn()
            return (time.perf_counter() - start) / (n_calls if batch == 1 else 1)
        return run

    times = alternate({k: timer(fn) for k, fn in calls.items()}, repeats)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_classifier(model_dir: str, work: str, args: argparse.Namespace) -> list[dict]:
    cands = candidates(model_dir, work, args.threads)
    test_csv = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "splits", "test.csv")
    rows = read_manifest(test_csv)
    base = os.path.dirname(test_csv)
    any_pred = next(iter(cands.values()))[0]
    names = any_pred.labels
    y = torch.tensor([names.index(str(r["label"])) for r in rows])
    samples = [any_pred.decode({"text": r["text"], "image": r["image"]}, i, base) for i, r in enumerate(rows)]
    out: list[dict] = []
    accuracy = {}
    for name, (pred, _) in cands.items():
        probs = np.array([[p["probabilities"][n] for n in names] for p in pred.predict_decoded(samples)])
        m = classification_metrics(torch.from_numpy(np.log(probs + 1e-12)), y, "single_label")
        accuracy[name] = (m["accuracy"], m["macro_f1"])
    for batch in (1, 32):
        chunk = (samples * 2)[:batch]
        secs = time_calls({k: classifier_call(p, chunk) for k, (p, _) in cands.items()}, batch, args.repeats, args.calls)
        for name, (_, size) in cands.items():
            out.append(_row("classifier", name, batch, secs, size, cands, {"accuracy": accuracy[name][0],
                                                                           "macro_f1": accuracy[name][1]}))
    return out


def bench_towers(model_dir: str, work: str, args: argparse.Namespace) -> list[dict]:
    cands = candidates(model_dir, work, args.threads)
    test_csv = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "splits", "test.csv")
    rows = read_manifest(test_csv)
    base = os.path.dirname(test_csv)
    images = list(dict.fromkeys(r["image"] for r in rows))
    texts = list(dict.fromkeys(r["text"] for r in rows))
    pairs = sorted({(texts.index(r["text"]), images.index(r["image"])) for r in rows})
    scores = {}
    for name, (pred, _) in cands.items():
        sim = torch.from_numpy(pred.embed("text", texts, base) @ pred.embed("image", images, base).T)
        m = retrieval_metrics(sim, pairs, names=("text", "image"))
        scores[name] = {"text_to_image/R@1": m["text_to_image/R@1"], "image_to_text/R@1": m["image_to_text/R@1"]}
    decoded = [next(iter(cands.values()))[0].decode({"image": p}, i, base)["image"] for i, p in enumerate(images)]
    out: list[dict] = []
    for batch in (1, 32):
        imgs, txts = (decoded * 2)[:batch], (texts * 2)[:batch]
        secs = time_calls({k: towers_call(p, imgs, txts) for k, (p, _) in cands.items()}, batch, args.repeats, args.calls)
        for name, (_, size) in cands.items():
            out.append(_row("two-tower", name, batch, secs, size, cands, scores[name]))
    return out


def _row(model: str, name: str, batch: int, secs: dict, size: int, cands: dict, quality: dict) -> dict:
    base_t, base_size = secs["pytorch fp32"], cands["pytorch fp32"][1]
    fp32_t, fp32_size = secs["onnxruntime fp32"], cands["onnxruntime fp32"][1]
    return {"model": model, "candidate": name, "batch": batch, "ms/batch": 1000 * secs[name],
            "samples/s": batch / secs[name], "throughput vs pytorch": base_t / secs[name],
            "latency vs ort fp32": secs[name] / fp32_t, "MiB": size / 2**20, "size vs pytorch": size / base_size,
            "size vs ort fp32": size / fp32_size, **quality}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", default="outputs/text_image_classification/model")
    parser.add_argument("--towers", default="outputs/image_text_retrieval/model")
    parser.add_argument("--work", default="/tmp/bench_deploy", help="where the exported folders go")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="calls per timed round at batch 1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    load_start = os.getloadavg()
    torch.set_num_threads(args.threads)
    for path in (args.classifier, args.towers):
        if not os.path.isdir(path):
            raise SystemExit(f"{path} not found: train it first (see the module docstring)")
    rows = bench_classifier(args.classifier, args.work, args) + bench_towers(args.towers, args.work, args)
    columns = ["model", "candidate", "batch", "ms/batch", "samples/s", "throughput vs pytorch", "latency vs ort fp32",
               "MiB", "size vs ort fp32", "accuracy", "macro_f1", "text_to_image/R@1", "image_to_text/R@1"]
    print_table("Inference, CPU", rows, columns)
    print(f"\nload average (1, 5, 15 min): start {load_start}, end {os.getloadavg()} on {os.cpu_count()} cores")
    write_json(args.json, {"rows": rows, "args": vars(args), "load_average": {"start": load_start, "end": os.getloadavg()}})


if __name__ == "__main__":
    main()
