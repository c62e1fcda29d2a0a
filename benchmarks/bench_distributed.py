"""FSDP2 vs DDP on 2 CPU processes (gloo): model-state memory per process and step time, same model, same batches.

Each of the 2 ranks builds the model twice from the same seed: one copy wrapped in DDP, one sharded with
``fully_shard`` over the block classes the Trainer hands accelerate (`fsdp_block_classes`). Steps alternate
between the two copies in the same processes, so machine drift hits both alike. Memory is counted exactly
from the tensors each rank holds (parameters, gradients, AdamW state: local shards for FSDP), and peak RSS
is printed for the whole process (it holds both copies). accelerate enables FSDP on GPUs only, hence the
direct torch calls; on GPUs the same sharding comes from ``recipes/accelerate/fsdp.yaml``.

    PYTHONPATH=. python benchmarks/bench_distributed.py [--steps 6] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from common import machine_info, print_table  # noqa: E402


def build(model_kind: str = "packaged", seed: int = 0):
    """The default recipe's model (MiniLM + EfficientNet-Lite0 at 128 px, concat fusion), every encoder trainable."""
    from encoders import create_encoder
    from fusion import create_fusion
    from multimodal import MultimodalModel, TaskHead

    torch.manual_seed(seed)
    text = create_encoder("text:sentence-transformers/all-MiniLM-L6-v2", max_length=32)
    image = create_encoder("image:tf_efficientnet_lite0", img_size=128)
    encoders = {"text": text, "image": image}
    fusion = create_fusion("concat", {m: e.output_dim for m, e in encoders.items()}, 256)
    return MultimodalModel(encoders, fusion=fusion, head=TaskHead(256, 4))


def batch_for(model, n: int, rank: int):
    import numpy as np

    rng = np.random.default_rng(rank)
    texts = [f"a caption number {i} with some words" for i in range(n)]
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(n)]
    return {"inputs": {"text": model.encoders["text"].preprocess(texts, train=True),
                       "image": model.encoders["image"].preprocess(images, train=True)},
            "present": {"text": torch.ones(n, dtype=torch.bool), "image": torch.ones(n, dtype=torch.bool)},
            "labels": torch.arange(n) % 4}


def state_bytes(model, optimizer) -> int:
    """Bytes of parameters, gradients and optimizer state this rank holds (local shards of DTensors)."""

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    total = 0
    for p in model.parameters():
        total += local(p).numel() * p.element_size()
        if p.grad is not None:
            total += local(p.grad).numel() * p.grad.element_size()
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.dim() > 0:
                total += local(v).numel() * v.element_size()
    return total


def worker(rank: int, port: int, args, out: str) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from multimodal.training.distributed import fsdp_block_classes

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=300))
    models = {"ddp": DistributedDataParallel(build(args.model))}
    sharded = build(args.model)
    classes = fsdp_block_classes(sharded)
    for module in list(sharded.modules()):
        if type(module).__name__ in classes:
            fully_shard(module)
    fully_shard(sharded)
    models["fsdp"] = sharded
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    batch = batch_for(models["ddp"].module, args.batch_size, rank)
    times: dict[str, list[float]] = {k: [] for k in models}
    losses: dict[str, list[float]] = {k: [] for k in models}
    for step in range(args.steps + 1):
        for name in (list(models) if step % 2 == 0 else list(models)[::-1]):
            model, opt = models[name], optimizers[name]
            dist.barrier()
            start = time.perf_counter()
            out_ = model(inputs=batch["inputs"], present=batch["present"], labels=batch["labels"])
            out_.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
            dist.barrier()
            if step:  # step 0 warms up
                times[name].append(time.perf_counter() - start)
            losses[name].append(float(out_.loss.detach()))
    report = {name: {"state_mib": state_bytes(models[name], optimizers[name]) / 2**20,
                     "step_s": statistics.median(times[name]), "losses": losses[name]} for name in models}
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["classes"] = classes
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="packaged", choices=["packaged"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(worker, args=(port, args, out), nprocs=2, join=True, start_method="spawn")
        reports = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in (0, 1)]
    rows = []
    for name in ("ddp", "fsdp"):
        rows.append({"mode": name, "model_state_MiB_rank0": reports[0][name]["state_mib"],
                     "model_state_MiB_rank1": reports[1][name]["state_mib"],
                     "step_s_median": max(r[name]["step_s"] for r in reports),
                     "first_loss": reports[0][name]["losses"][0], "last_loss": reports[0][name]["losses"][-1]})
    for r in rows:
        r["memory_vs_ddp"] = r["model_state_MiB_rank0"] / rows[0]["model_state_MiB_rank0"]
        r["time_vs_ddp"] = r["step_s_median"] / rows[0]["step_s_median"]
    print(f"machine: {machine_info()}; FSDP units: {reports[0]['classes']}; peak RSS per process (both copies): "
          f"{reports[0]['peak_rss_mib']:.0f} / {reports[1]['peak_rss_mib']:.0f} MiB")
    print_table(f"FSDP2 vs DDP, 2 CPU processes, batch {args.batch_size} per process, {args.steps} steps", rows, list(rows[0]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "rows": rows, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
