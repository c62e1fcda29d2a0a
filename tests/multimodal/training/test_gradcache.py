"""Gradient caching: in float64, the loss and every gradient equal those of the plain step over the whole batch."""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from accelerate import Accelerator
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from encoders import create_encoder
from encoders.base import EncoderOutput
from multimodal import Trainer, get_task
from multimodal.config import ConfigError, load_config
from multimodal.models.dual import DualEncoder
from multimodal.tasks import build_loaders
from multimodal.training.gradcache import GradientCache

ROWS, CHUNK = 8, 3  # three chunks of 3, 2, 3 rows


def _model(tiny_text_dir: str, image: str = "test_efficientnet_gn", dropout: float = 0.0) -> DualEncoder:
    torch.manual_seed(0)
    encoders = {"text": create_encoder(f"text:{tiny_text_dir}"),
                "image": create_encoder(f"image:{image}", pretrained=False, img_size=32)}
    model = DualEncoder(encoders, embed_dim=8, dropout=dropout, init_logit_scale=1.3).double().train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = dropout
    return model


def _batch(model: DualEncoder, rows: int = ROWS) -> dict:
    rng = np.random.default_rng(1)
    words = ["red", "green", "blue", "cat", "dog", "boat", "a", "big", "small", "tree"]
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(rows)]
    images = [rng.integers(0, 256, (24, 20, 3), dtype=np.uint8) for _ in range(rows)]
    batch = model.preprocess({"text": texts, "image": images})
    batch["present"]["text"][4] = False  # a row without its caption: neither query nor candidate
    return batch


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _plain(model: DualEncoder, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = model(inputs=batch["inputs"], present=batch["present"], features=batch.get("features")).loss
    loss.backward()
    return loss.detach(), _grads(model)


def _cached(model: DualEncoder, batch: dict, chunk: int = CHUNK) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = GradientCache(chunk, Accelerator(cpu=True)).step(model, batch)
    return loss, _grads(getattr(model, "module", model))  # DDP: the wrapped model's names


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _calls(module: nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_loss_and_every_gradient_equal_the_plain_large_batch(tiny_text_dir):
    model = _model(tiny_text_dir)
    batch = _batch(model)
    text_calls = _calls(model.encoders["text"])
    plain_loss, plain = _plain(model, batch)
    assert len(text_calls) == 1
    loss, cached = _cached(model, batch)
    assert len(text_calls) == 1 + 2 * 3, "three chunks, each embedded without and then with a graph"

    assert float(abs(loss - plain_loss)) < 1e-12
    assert _max_diff(cached, plain) < 1e-10
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(plain) >= trained - {"encoders.text.backbone.pooler.dense.weight", "encoders.text.backbone.pooler.dense.bias"}
    for part in ("head.logit_scale", "head.projections.text", "head.projections.image", "encoders.text.", "encoders.image."):
        assert any(n.startswith(part) and float(g.abs().max()) > 1e-6 for n, g in plain.items()), part
    # A batch that fits one chunk is the plain step itself.
    one_loss, one = _cached(model, batch, chunk=ROWS)
    assert float(abs(one_loss - plain_loss)) < 1e-12 and _max_diff(one, plain) < 1e-10


def _chunked_reference(model: DualEncoder, batch: dict, bounds: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Each chunk embedded with a graph, in order, then one loss and one backward: what GradCache must equal
    when the towers draw random numbers (dropout)."""
    parts: dict[str, list[torch.Tensor]] = {"text": [], "image": []}
    for start, stop in bounds:
        chunk = {m: {k: v[start:stop] for k, v in x.items()} for m, x in batch["inputs"].items()}
        out = model(inputs=chunk, compute_loss=False)
        for m in parts:
            parts[m].append(out.embeddings[m])
    model.head.loss({m: torch.cat(p) for m, p in parts.items()}, batch["present"]).backward()
    return _grads(model)


def test_dropout_sees_the_same_masks_when_each_chunk_is_run_again(tiny_text_dir):
    model = _model(tiny_text_dir, dropout=0.3)
    batch = _batch(model)
    bounds = GradientCache(CHUNK, Accelerator(cpu=True))._bounds(ROWS)
    torch.manual_seed(5)
    reference = _chunked_reference(model, batch, bounds)
    after_reference = torch.get_rng_state()
    torch.manual_seed(5)
    _, cached = _cached(model, batch)
    assert _max_diff(cached, reference) < 1e-10
    assert torch.equal(torch.get_rng_state(), after_reference), "the step leaves the RNG where one pass leaves it"
    torch.manual_seed(6)  # the check is not vacuous: other dropout masks give other gradients
    assert _max_diff(_chunked_reference(model, batch, bounds), reference) > 1e-3


def test_a_frozen_tower_is_encoded_once_and_cached_features_never(tiny_text_dir):
    model = _model(tiny_text_dir).freeze_encoders(["image"])
    batch = _batch(model)
    image_calls, text_calls = _calls(model.encoders["image"]), _calls(model.encoders["text"])
    plain_loss, plain = _plain(model, batch)
    loss, cached = _cached(model, batch)
    assert (len(image_calls), len(text_calls)) == (1 + 3, 1 + 6)
    assert float(abs(loss - plain_loss)) < 1e-12 and _max_diff(cached, plain) < 1e-10
    assert "head.projections.image.1.weight" in cached and not any(n.startswith("encoders.image") for n in cached)

    with torch.no_grad():  # the feature cache: image features come with the batch, the image encoder never runs
        features = {"image": EncoderOutput(model.encoders["image"](batch["inputs"]["image"]).pooled)}
    from_cache = {"inputs": {"text": batch["inputs"]["text"]}, "present": batch["present"], "features": features}
    del image_calls[:]
    loss, cached = _cached(model, from_cache)
    assert not image_calls
    assert float(abs(loss - plain_loss)) < 1e-12 and _max_diff(cached, plain) < 1e-10


def test_batchnorm_statistics_move_once_per_chunk(tiny_text_dir):
    model = _model(tiny_text_dir, image="test_efficientnet")
    batch = _batch(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    bounds = GradientCache(CHUNK, Accelerator(cpu=True))._bounds(ROWS)
    reference = _chunked_reference(model, batch, bounds)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    model.load_state_dict(start)
    with pytest.warns(UserWarning, match="BatchNorm layers of the image tower"):
        _, cached = _cached(model, batch)
    assert _max_diff(cached, reference) < 1e-10
    for k, v in stats.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert int(stats["encoders.image.backbone.bn1.num_batches_tracked"]) == 3


# -- through the Trainer and the config ------------------------------------------------------------------------


def _retrieval_config(manifest: str, out, tiny_text_dir: str, *extra: str):
    return load_config(None, [
        f"data.train={manifest}", "data.audio_column=null", "data.label_column=null", "data.val_fraction=0.25",
        "data.test_fraction=0", "data.num_workers=0", "data.feature_cache=null", "model.task=retrieval",
        f"model.encoders={{text: 'text:{tiny_text_dir}', image: 'image:test_efficientnet_gn'}}",
        "model.encoder_kwargs={image: {img_size: 32}}", "model.pretrained=false", "model.fusion_dim=8",
        "model.freeze_encoders=false", "train.epochs=1", "train.batch_size=10", "train.gradient_cache=true",
        "train.contrastive_chunk_size=4", "train.log_with=none", "train.progress_bar=false", "train.log_every=1",
        "train.keep_checkpoints=null", f"train.output_dir={out}", "retrieval.one_caption_per_item=false", *extra,
    ])


def _train(cfg) -> Trainer:
    task = get_task(cfg.model.task)(cfg)
    splits = task.build_splits(progress=False)
    model = task.build_model(splits)
    trainer = Trainer(model, cfg.train, build_loaders(task, model, splits, progress=False)["train"])
    trainer.train()
    return trainer


def test_trainer_steps_through_the_cache_and_resumes_bit_identically(tmp_path, day_night_manifest, tiny_text_dir,
                                                                      monkeypatch):
    steps = []
    real_step = GradientCache.step
    monkeypatch.setattr(GradientCache, "step", lambda self, *a: steps.append(1) or real_step(self, *a))
    full = _train(_retrieval_config(day_night_manifest, tmp_path / "a", tiny_text_dir))
    assert full.state.global_step == 3 and len(steps) == 3  # 30 training rows, batches of 10 in chunks of 4
    assert all(np.isfinite(e["loss"]) for e in full.state.train_log)

    cfg = _retrieval_config(day_night_manifest, tmp_path / "b", tiny_text_dir, "train.stop_after_steps=2")
    _train(cfg)
    cfg.train.stop_after_steps, cfg.train.resume_from = None, "latest"  # mid-epoch: step 2 of 3
    resumed = _train(cfg)
    reference = full.unwrapped_model.state_dict()
    for name, value in resumed.unwrapped_model.state_dict().items():
        assert torch.equal(value, reference[name]), name


def test_fused_tasks_and_custom_losses_are_refused(tmp_path, day_night_manifest, tiny_text_dir):
    with pytest.raises(ConfigError, match="train.gradient_cache: model.task='single_label' scores each row on its own"):
        _retrieval_config(day_night_manifest, tmp_path, tiny_text_dir, "model.task=single_label",
                          "data.label_column=label")
    with pytest.raises(ConfigError, match="train.gradient_cache and train.distill cannot be combined"):
        _retrieval_config(day_night_manifest, tmp_path, tiny_text_dir, f"train.distill={{teacher: '{tmp_path}'}}")
    with pytest.raises(ConfigError, match="needs a two-tower model"):
        GradientCache.for_trainer(type("T", (), {"unwrapped_model": nn.Linear(2, 2)})())
    with pytest.raises(ConfigError, match="a custom training loss"):
        GradientCache(4, Accelerator(cpu=True)).step(nn.Linear(2, 2), {}, loss_fn=lambda b, o: o.loss)


# -- two processes (gloo): DDP through accelerate ------------------------------------------------------------


def _ddp_worker(rank: int, port: int, out_dir: str, tiny_text_dir: str) -> None:
    """Each rank holds half of a 12-row batch: gradient caching under DDP equals one process over all 12 rows,
    and all-reduces as many gradient values as the plain DDP step (each once; buckets may be regrouped)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    model = _model(tiny_text_dir)
    reference = copy.deepcopy(model)
    reference.head.gather = False  # one process, the whole batch
    batch = _batch(model, rows=12)
    local = {"inputs": {m: {k: v[6 * rank: 6 * rank + 6] for k, v in x.items()} for m, x in batch["inputs"].items()},
             "present": {m: p[6 * rank: 6 * rank + 6] for m, p in batch["present"].items()}}
    ddp = acc.prepare(model)
    reductions: list[int] = []

    def counting_allreduce(state, bucket):
        reductions.append(bucket.buffer().numel())
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_allreduce)
    _, expected = _plain(reference, batch)
    acc.backward(ddp(**local).loss)
    plain, plain_reduced = _grads(model), sum(reductions)
    loss, cached = _cached(ddp, local, chunk=4)  # two chunks of 3 rows per process
    report = {"plain": _max_diff(plain, expected), "cached": _max_diff(cached, expected), "loss": float(loss),
              "reduced": [plain_reduced, sum(reductions) - plain_reduced],
              "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_gathers_negatives_and_all_reduces_once_per_step(tmp_path, tiny_text_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path), tiny_text_dir), nprocs=2, join=True)
    reports = [json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in range(2)]
    for report in reports:
        assert report["plain"] < 1e-10 and report["cached"] < 1e-10, report
        assert report["reduced"] == [report["trainable"]] * 2, report
    assert reports[0]["loss"] != reports[1]["loss"]  # each rank's share of the global loss (see clip_loss)
