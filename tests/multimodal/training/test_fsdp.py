"""FSDP2 on 2 CPU processes (gloo): the framework's model sharded per encoder family trains like one process.

accelerate 1.15 enables FSDP only on GPUs (``distributed_type: FSDP`` with ``ACCELERATE_USE_CPU`` runs plain
DDP), so on CPU the model is sharded here with torch's own ``fully_shard`` over the block classes that the
Trainer hands accelerate (`fsdp_block_classes`); the checks cover what the framework adds: the wrap classes,
frozen towers and a partially unlocked tower, gathering full weights for ``save_pretrained``, loading them
back into shards, and merging a sharded (accelerate-layout) checkpoint into a folder that loads without FSDP.
The launch through accelerate with ``recipes/accelerate/fsdp.yaml`` is tested where there are 2 GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp

from multimodal import get_task, load_model
from multimodal.config import load_config
from multimodal.tasks import build_loaders
from multimodal.training.distributed import (
    SHARDED_MODEL_DIR,
    consolidate_checkpoint,
    fsdp_block_classes,
    full_state_dict,
    is_sharded,
    load_full_state_dict,
)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
STEPS = 4
VARIANTS = ("frozen_image", "partial_text")


def _manifest(root: str, n: int = 32) -> str:
    import numpy as np
    import pandas as pd
    from PIL import Image

    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        day = i % 2 == 0
        pixels = np.clip((200 if day else 40) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, "img", f"{i}.png"))
        rows.append({"text": f"a {'sunny' if day else 'dark'} scene {i}", "image": f"img/{i}.png",
                     "label": "day" if day else "night"})
    pd.DataFrame(rows).to_csv(os.path.join(root, "m.csv"), index=False)
    return os.path.join(root, "m.csv")


def _build(root: str, text_dir: str, variant: str):
    """Model and a fixed list of global batches of 8, identical in every process."""
    cfg = load_config(None, [
        f"data.train={os.path.join(root, 'm.csv')}", "data.audio_column=null", "data.val_fraction=0.25",
        "data.test_fraction=0", "data.num_workers=0", "data.feature_cache=null",
        f"model.encoders={{text: 'text:{text_dir}', image: 'image:test_efficientnet'}}",
        "model.encoder_kwargs={image: {img_size: 32}}", "model.pretrained=false", "model.fusion_dim=16",
        "model.head_dropout=0", "model.freeze_encoders=[image]", "train.batch_size=8", "train.seed=5",
        f"train.output_dir={os.path.join(root, 'out')}",
    ])
    task = get_task(cfg.model.task)(cfg)
    splits = task.build_splits(progress=False)
    torch.manual_seed(0)
    model = task.build_model(splits)
    for module in model.modules():  # no dropout: one process and two must see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if variant == "partial_text":  # unlock only the last transformer layer of the text tower
        for name, p in model.encoders["text"].named_parameters():
            p.requires_grad = ".layer.1." in name
    loader = build_loaders(task, model, splits, progress=False)["train"]
    loader.sampler.set_epoch(0)
    batches = [b for b in loader if len(b["index"]) == 8][:STEPS]
    return model, batches


def _rows(batch: dict, start: int, stop: int) -> dict:
    def cut(x):
        if isinstance(x, torch.Tensor):
            return x[start:stop]
        return {k: cut(v) for k, v in x.items()}

    return cut(batch)


def _train(model, batches, rank: int = 0, world: int = 1) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-3, 1e-2, 0.01), lr=1e-2)
    params = [p for p in model.parameters() if p.requires_grad]
    losses = []
    model.train()
    for batch in batches:
        n = len(batch["index"]) // world
        local = _rows(batch, rank * n, (rank + 1) * n)
        out = model(inputs=local["inputs"], present=local["present"], labels=local["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss.detach().clone()
        if world > 1:
            torch.distributed.all_reduce(loss)
            loss /= world
        losses.append(float(loss))
    return losses


def _shard(model) -> list[str]:
    from torch.distributed.fsdp import fully_shard

    classes = fsdp_block_classes(model)
    for module in list(model.modules()):
        if type(module).__name__ in classes:
            fully_shard(module)
    fully_shard(model)
    return classes


def _worker(rank: int, port: int, root: str, text_dir: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        report: dict = {}
        for variant in VARIANTS:
            model, batches = _build(root, text_dir, variant)
            classes = _shard(model)
            trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
            losses = _train(model, batches, rank, 2)
            full = full_state_dict(model)  # collective
            # a sharded checkpoint in accelerate's layout (what save_state writes under SHARDED_STATE_DICT)
            ckpt = os.path.join(root, f"ckpt-{variant}")
            dcp.save({"model": get_sharded(model)}, checkpoint_id=os.path.join(ckpt, SHARDED_MODEL_DIR))
            # the full weights go back into a freshly sharded model: same outputs as the trained one
            if rank == 0:
                torch.save(full, os.path.join(root, f"full-{variant}.pt"))
            dist.barrier()
            fresh, _ = _build(root, text_dir, variant)
            _shard(fresh)
            load_full_state_dict(fresh, torch.load(os.path.join(root, f"full-{variant}.pt")))
            batch = _rows(batches[0], rank * 4, rank * 4 + 4)
            model.eval()
            fresh.eval()
            with torch.no_grad():
                same = torch.equal(model(inputs=batch["inputs"], present=batch["present"]).logits,
                                   fresh(inputs=batch["inputs"], present=batch["present"]).logits)
            if rank == 0:
                report[variant] = {"classes": classes, "losses": losses, "reload_same": same,
                                   "sharded": is_sharded(model), "trainable": trainable}
        if rank == 0:
            with open(os.path.join(root, "report.json"), "w") as f:
                json.dump(report, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def get_sharded(model):
    """The sharded (DTensor) model state dict, as accelerate's save_fsdp_model saves it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model)


def run_two_ranks(worker, *args, timeout: float = 120) -> None:
    """Spawn 2 ranks of `worker(rank, port, *args)`; a rank's exception re-raises here, a hung rank fails."""
    ctx = mp.start_processes(worker, args=(_free_port(), *args), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=2):  # raises ProcessRaisedException with the rank's traceback
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"a rank hung for more than {timeout:.0f} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fsdp_two_processes_match_one_process(tmp_path, tiny_text_dir):
    root = str(tmp_path)
    _manifest(root)
    reference = {}
    for variant in VARIANTS:
        model, batches = _build(root, tiny_text_dir, variant)
        reference[variant] = (_train(model, batches), {k: v.detach().clone() for k, v in model.state_dict().items()},
                              sorted(n for n, p in model.named_parameters() if p.requires_grad), model)
    run_two_ranks(_worker, root, tiny_text_dir)
    report = json.load(open(tmp_path / "report.json"))
    for variant in VARIANTS:
        losses, weights, trainable, plain = reference[variant]
        got = report[variant]
        # one FSDP unit per transformer layer and per EfficientNet block, from the encoder families
        assert {"BertLayer", "InvertedResidual"} <= set(got["classes"]) and got["sharded"]
        assert got["trainable"] == trainable
        assert got["losses"] == pytest.approx(losses, rel=1e-4, abs=1e-5)
        full = torch.load(tmp_path / f"full-{variant}.pt")
        assert full.keys() == weights.keys()
        for k, v in weights.items():
            assert torch.allclose(full[k], v, atol=1e-5), (variant, k)
        initial = _initial(variant, root, tiny_text_dir)
        moved = [k for k in trainable if not torch.equal(full[k], initial[k])]
        assert len(moved) == len(trainable)  # every trainable tensor was updated ...
        still = [k for k in full if k not in trainable and full[k].is_floating_point()]
        assert any(k.startswith("encoders.image.") for k in still)
        assert all(torch.equal(full[k], initial[k]) for k in still), variant  # ... and nothing else moved
        assert report[variant]["reload_same"]
        # the sharded checkpoint merges into a save_pretrained folder that loads without FSDP
        plain.save_pretrained(tmp_path / f"arch-{variant}")
        out = consolidate_checkpoint(str(tmp_path / f"ckpt-{variant}"), str(tmp_path / f"arch-{variant}"),
                                     str(tmp_path / f"merged-{variant}"))
        merged = load_model(out)
        for k, v in merged.state_dict().items():
            assert torch.allclose(v, full[k], atol=1e-6), k


def _initial(variant: str, root: str, text_dir: str) -> dict:
    """The weights before training (the model is built from the same seed)."""
    model, _ = _build(root, text_dir, variant)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_block_classes_per_encoder_family(tiny_text_dir):
    from encoders import create_encoder
    from fusion import create_fusion
    from multimodal import MultimodalModel, TaskHead

    encoders = {"text": create_encoder(f"text:{tiny_text_dir}"),
                "image": create_encoder("image:vit_tiny_patch16_224", pretrained=False, img_size=32),
                "audio": create_encoder("audio-mel:resnet18", pretrained=False)}
    fusion = create_fusion("concat", {m: e.output_dim for m, e in encoders.items()}, 8)
    classes = fsdp_block_classes(MultimodalModel(encoders, fusion=fusion, head=TaskHead(8, 2)))
    assert {"BertLayer", "Block", "BasicBlock"} <= set(classes)
    assert not {"Sequential", "ModuleList", "VisionTransformer", "BertModel"} & set(classes)


def test_consolidate_names_a_missing_sharded_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=SHARDED_MODEL_DIR):
        consolidate_checkpoint(str(tmp_path), str(tmp_path), str(tmp_path / "out"))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="accelerate runs FSDP on GPUs only (needs 2)")
def test_accelerate_fsdp_launch_saves_sharded_and_full(tmp_path, tiny_text_dir):
    import yaml

    _manifest(str(tmp_path))
    cfg = {"data": {"train": str(tmp_path / "m.csv"), "audio_column": None, "num_workers": 0, "feature_cache": None,
                    "val_fraction": 0.25, "test_fraction": 0.0},
           "model": {"encoders": {"text": f"text:{tiny_text_dir}", "image": "image:test_efficientnet"},
                     "encoder_kwargs": {"image": {"img_size": 32}}, "pretrained": False, "fusion_dim": 16,
                     "freeze_encoders": ["image"]},
           "train": {"output_dir": str(tmp_path / "out"), "epochs": 2, "batch_size": 4, "log_with": "none",
                     "progress_bar": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           os.path.join(ROOT, "recipes", "accelerate", "fsdp.yaml"), "--main_process_port", str(_free_port()),
           os.path.join(ROOT, "recipes", "text_image_classification.py"), "--config", str(tmp_path / "cfg.yaml")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "out" / "checkpoints" / "epoch-002"
    assert (ckpt / SHARDED_MODEL_DIR).is_dir()
    merged = load_model(consolidate_checkpoint(str(ckpt), str(tmp_path / "out" / "model"), str(tmp_path / "merged")))
    assert not is_sharded(merged)
