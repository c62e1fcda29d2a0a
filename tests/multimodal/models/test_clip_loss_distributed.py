"""Two CPU processes (gloo): the gathered loss and DDP-averaged gradients equal the single-process ones."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from encoders.base import EncoderOutput
from multimodal.models.contrastive import ContrastiveHead

DIMS = {"image": 10, "text": 6}
WORLD = 2


def _global_batch(n: int) -> tuple[dict[str, EncoderOutput], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(123)
    feats = {m: EncoderOutput(torch.randn(n, d, generator=g)) for m, d in DIMS.items()}
    present = {m: torch.ones(n, dtype=torch.bool) for m in DIMS}
    present["text"][2] = False  # one pair with a missing caption, left out of the loss
    return feats, present


def _head(gather: bool = True) -> ContrastiveHead:
    return ContrastiveHead(DIMS, 8, projection="mlp", hidden_dim=12, gather=gather)


def _loss(head: ContrastiveHead, feats: dict, present: dict) -> torch.Tensor:
    return head.loss({m: head.embed(m, f.pooled) for m, f in feats.items()}, present)


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters()}


def _check(rank: int, out_dir: str, splits: list[int]) -> None:
    torch.manual_seed(0)  # identical initial weights on every rank, as DDP guarantees
    fusion = _head()
    reference = _head(gather=False)
    reference.load_state_dict(fusion.state_dict())

    feats, present = _global_batch(sum(splits))
    start, stop = sum(splits[:rank]), sum(splits[: rank + 1])
    local = {m: EncoderOutput(f.pooled[start:stop]) for m, f in feats.items()}
    local_present = {m: p[start:stop] for m, p in present.items()}

    loss = _loss(fusion, local, local_present)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= WORLD
    grads = _grads(fusion)
    for g in grads.values():  # what DDP does: average gradients across ranks
        dist.all_reduce(g)
        g /= WORLD

    ref_loss = _loss(reference, feats, present)  # single process, whole global batch
    ref_loss.backward()
    ref_grads = _grads(reference)

    torch.testing.assert_close(mean_loss, ref_loss.detach(), rtol=1e-5, atol=1e-6)
    assert set(grads) == set(ref_grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # The local loss alone is not the global loss: the check above is not vacuous.
    assert not torch.allclose(loss.detach(), ref_loss.detach())
    Path(out_dir, f"split{splits[0]}-rank{rank}.ok").write_text(f"{mean_loss.item()} {ref_loss.item()}")


class _LossModule(torch.nn.Module):
    """What a trainer wraps in DDP: forward returns the contrastive loss."""

    def __init__(self, fusion: torch.nn.Module) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(self, features: dict, present: dict) -> torch.Tensor:
        return _loss(self.fusion, features, present)


def _check_real_ddp(rank: int, out_dir: str, splits: list[int]) -> None:
    """The same equality through torch's DistributedDataParallel (its gradient all-reduce, not ours)."""
    torch.manual_seed(0)
    fusion = _head()
    reference = _head(gather=False)
    reference.load_state_dict(fusion.state_dict())
    ddp = torch.nn.parallel.DistributedDataParallel(_LossModule(fusion))
    feats, present = _global_batch(sum(splits))
    start, stop = sum(splits[:rank]), sum(splits[: rank + 1])
    local = {m: EncoderOutput(f.pooled[start:stop]) for m, f in feats.items()}
    ddp(local, {m: p[start:stop] for m, p in present.items()}).backward()
    _loss(reference, feats, present).backward()
    ref_grads = _grads(reference)
    for name, g in _grads(fusion).items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    Path(out_dir, f"ddp{splits[0]}-rank{rank}.ok").write_text("ok")


def _worker(rank: int, port: int, out_dir: str, all_splits: list[list[int]]) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for splits in all_splits:
            _check(rank, out_dir, splits)
        _check_real_ddp(rank, out_dir, all_splits[0])
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_clip_loss_and_grads_match_single_process(tmp_path):
    all_splits = [[4, 4], [5, 3]]  # even shards, and uneven ones (last batch of an epoch)
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), all_splits), nprocs=WORLD, join=True)
    for splits in all_splits:
        results = [Path(tmp_path, f"split{splits[0]}-rank{r}.ok").read_text().split() for r in range(WORLD)]
        assert float(results[0][0]) == float(results[1][0])  # every rank saw the same mean loss
    assert all(Path(tmp_path, f"ddp{all_splits[0][0]}-rank{r}.ok").exists() for r in range(WORLD))
