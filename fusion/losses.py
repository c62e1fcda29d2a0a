"""Symmetric InfoNCE (CLIP/CLAP) loss with a cross-process all-gather that keeps gradients exact."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> tuple[int, int]:
    """(rank, world size) when a process group with more than one process is up, else (0, 1)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithLocalGrad(torch.autograd.Function):
    """All-gather rows from every rank; the local shard is the caller's tensor.

    Backward sums the gradient of the gathered tensor over ranks and returns this rank's slice, so every
    rank's embeddings receive the gradient of *all* ranks' losses (not only of the local queries).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:  # type: ignore[override]
        max_rows = max(sizes)
        padded = x.new_zeros((max_rows,) + tuple(x.shape[1:]))
        padded[: x.shape[0]] = x
        chunks = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(chunks, padded.contiguous())
        parts = [chunk[:n] for chunk, n in zip(chunks, sizes)]
        parts[rank] = x  # substitute the local shard with the caller's values
        ctx.sizes, ctx.rank = list(sizes), rank
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def _gather_sizes(n: int, device: torch.device, world: int) -> list[int]:
    """Row counts of every rank's local batch."""
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def gather_features(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather `x` [n, ...] from every rank (sizes may differ); returns (global rows, offset of the local rows).

    Gradients flow to the local shard, summed over every rank's use of it. Without a multi-process group
    this returns `(x, 0)`.
    """
    rank, world = _distributed()
    if world == 1:
        return x, 0
    sizes = _gather_sizes(x.shape[0], x.device, world)
    return _GatherWithLocalGrad.apply(x, sizes, rank), sum(sizes[:rank])


def clip_loss(
    emb_a: torch.Tensor,
    emb_b: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: bool = True,
    valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned embeddings `emb_a` [n, D] and `emb_b` [n, D].

    `logit_scale` is in log space (similarities are multiplied by `exp(logit_scale)`). With `gather` and a
    multi-process group, each rank scores its local rows against the global batch and returns
    `world_size * (sum of local row losses) / (global row count)`, so the mean over ranks equals the
    single-process loss on the global batch and DDP-averaged gradients equal single-process gradients.
    `valid` (bool [n]) drops pairs where a modality is absent: such rows are neither queries nor candidates.
    """
    if emb_a.shape != emb_b.shape or emb_a.dim() != 2:
        raise ValueError(
            f"clip_loss: embeddings must both be [n, D], got {tuple(emb_a.shape)} and {tuple(emb_b.shape)}"
        )
    n = emb_a.shape[0]
    if valid is None:
        valid = torch.ones(n, dtype=torch.bool, device=emb_a.device)
    valid = valid.to(device=emb_a.device, dtype=torch.bool)
    if valid.shape != (n,):
        raise ValueError(f"clip_loss: valid must have shape ({n},), got {tuple(valid.shape)}")

    world = 1
    all_a, all_b, all_valid, offset = emb_a, emb_b, valid, 0
    if gather:
        _, world = _distributed()
        if world > 1:
            # One size exchange and one all-gather per step for both embeddings and the validity flags.
            dtype, d = torch.promote_types(emb_a.dtype, emb_b.dtype), emb_a.shape[1]
            packed = torch.cat([emb_a.to(dtype), emb_b.to(dtype), valid.to(dtype).unsqueeze(1)], dim=1)
            everything, offset = gather_features(packed)
            all_a, all_b = everything[:, :d].to(emb_a.dtype), everything[:, d : 2 * d].to(emb_b.dtype)
            all_valid = everything[:, 2 * d].detach() > 0.5

    scale = logit_scale.exp()
    labels = torch.arange(n, device=emb_a.device) + offset
    logits_a = scale * emb_a @ all_b.t()  # [n, N]: local a against every b
    logits_b = scale * emb_b @ all_a.t()  # [n, N]: local b against every a
    neg = torch.finfo(logits_a.dtype).min
    logits_a = logits_a.masked_fill(~all_valid.unsqueeze(0), neg)
    logits_b = logits_b.masked_fill(~all_valid.unsqueeze(0), neg)
    rows = 0.5 * (
        F.cross_entropy(logits_a, labels, reduction="none")
        + F.cross_entropy(logits_b, labels, reduction="none")
    )
    rows = torch.where(valid, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
    count = all_valid.sum().clamp_min(1).to(rows.dtype)
    return rows.sum() * world / count


class ClipLoss(nn.Module):
    """Thin module around `clip_loss`."""

    def __init__(self, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather

    def forward(
        self,
        emb_a: torch.Tensor,
        emb_b: torch.Tensor,
        logit_scale: torch.Tensor,
        valid: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Symmetric InfoNCE; see `clip_loss`."""
        return clip_loss(emb_a, emb_b, logit_scale, gather=self.gather, valid=valid)
