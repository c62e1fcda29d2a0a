"""The contrastive head of a two-tower (CLIP/CLAP-style) model and its loss: projections, temperature, InfoNCE.

Not a fusion: it never mixes modalities into one vector. Each modality is projected on its own into a
shared embedding space (`ContrastiveHead.embed`), so one modality can be embedded alone and any pair can
be compared; `ContrastiveHead.loss` is the symmetric InfoNCE (`clip_loss`) over the pairs of modalities
present in a batch, over the global batch across processes in training (`gather_features`).

`clip_loss` takes the exponentiated scale, as open_clip's `ClipLoss` does (the model returns
``logit_scale.exp()``, e.g. 100.0), or its log as ``log_logit_scale``; a scale that would overflow is
refused. The head keeps its learnable temperature in log space, like CLIP.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Optional, Union

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


Scale = Union[torch.Tensor, float]


def checked_logit_scale(logit_scale: Optional[Scale], log_logit_scale: Optional[Scale], dtype: torch.dtype,
                        device: torch.device) -> torch.Tensor:
    """The multiplier of the similarities from exactly one of `logit_scale` (exponentiated, open_clip's
    convention) or `log_logit_scale`; refused unless finite, positive and small enough for `dtype` logits."""
    if (logit_scale is None) == (log_logit_scale is None):
        raise TypeError("clip_loss: pass logit_scale (the exponentiated scale, e.g. 100.0 as open_clip's models "
                        "return it) or log_logit_scale (its log), exactly one of them")
    given = "logit_scale" if log_logit_scale is None else "log_logit_scale"
    value = torch.as_tensor(logit_scale if log_logit_scale is None else log_logit_scale, device=device)
    if value.numel() != 1:
        raise ValueError(f"clip_loss: {given} must be one number, got shape {tuple(value.shape)}")
    scale = (value if log_logit_scale is None else value.exp()).reshape(())
    limit = torch.finfo(dtype).max
    ok = torch.isfinite(scale) & (scale > 0) & (scale <= limit)
    rule = f"must be finite, > 0 and at most {limit:.3g} (larger {dtype} logits overflow)"
    if scale.device.type != "cpu":  # checked on the device: no host sync per step
        torch._assert_async(ok, f"clip_loss: the scale from {given} {rule}")
    elif not bool(ok):
        hint = "; is it already exponentiated? then pass logit_scale=" if given == "log_logit_scale" else ""
        raise ValueError(f"clip_loss: {given}={float(value):g} gives a scale of {float(scale):g}, which {rule}{hint}")
    return scale


def _global_batch(emb_a: torch.Tensor, emb_b: torch.Tensor, valid: torch.Tensor,
                  gather: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """(every rank's a rows, b rows, validity flags, offset of the local rows, world size)."""
    if gather:
        _, world = _distributed()
        if world > 1:
            # One size exchange and one all-gather per step for both embeddings and the validity flags.
            dtype, d = torch.promote_types(emb_a.dtype, emb_b.dtype), emb_a.shape[1]
            packed = torch.cat([emb_a.to(dtype), emb_b.to(dtype), valid.to(dtype).unsqueeze(1)], dim=1)
            everything, offset = gather_features(packed)
            all_a, all_b = everything[:, :d].to(emb_a.dtype), everything[:, d : 2 * d].to(emb_b.dtype)
            return all_a, all_b, everything[:, 2 * d].detach() > 0.5, offset, world
    return emb_a, emb_b, valid, 0, 1


def clip_loss(
    emb_a: torch.Tensor,
    emb_b: torch.Tensor,
    logit_scale: Optional[Scale] = None,
    gather: bool = True,
    valid: Optional[torch.Tensor] = None,
    *,
    log_logit_scale: Optional[Scale] = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned embeddings `emb_a` [n, D] and `emb_b` [n, D].

    Similarities are multiplied by `logit_scale` (exponentiated, as open_clip's models return it, e.g. 100.0),
    or by ``exp(log_logit_scale)``. With `gather` and a multi-process group, each rank scores its local rows
    against the global batch and returns `world_size * (sum of local row losses) / (global row count)`, so
    the mean over ranks equals the single-process loss on the global batch and DDP-averaged gradients equal
    single-process gradients. `valid` (bool [n]) drops pairs where a modality is absent: such rows are
    neither queries nor candidates.
    """
    if emb_a.shape != emb_b.shape or emb_a.dim() != 2:
        raise ValueError(
            f"clip_loss: embeddings must both be [n, D], got {tuple(emb_a.shape)} and {tuple(emb_b.shape)}"
        )
    n = emb_a.shape[0]
    scale = checked_logit_scale(logit_scale, log_logit_scale, torch.promote_types(emb_a.dtype, emb_b.dtype),
                                emb_a.device)
    if valid is None:
        valid = torch.ones(n, dtype=torch.bool, device=emb_a.device)
    valid = valid.to(device=emb_a.device, dtype=torch.bool)
    if valid.shape != (n,):
        raise ValueError(f"clip_loss: valid must have shape ({n},), got {tuple(valid.shape)}")
    all_a, all_b, all_valid, offset, world = _global_batch(emb_a, emb_b, valid, gather)
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
    """Thin module around `clip_loss`; `forward` takes the exponentiated scale, as the models return it
    (``DualEncoder`` outputs carry it as ``logit_scale``)."""

    def __init__(self, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, logit_scale: Scale,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Symmetric InfoNCE; see `clip_loss`."""
        return clip_loss(emb_a, emb_b, logit_scale, gather=self.gather, valid=valid)


def log_space_clip_loss(emb_a: torch.Tensor, emb_b: torch.Tensor, logit_scale: Scale, gather: bool = True,
                        valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`clip_loss` as `fusion.clip_loss` took it before the move: `logit_scale` in log space (deprecated)."""
    return clip_loss(emb_a, emb_b, gather=gather, valid=valid, log_logit_scale=logit_scale)


class LogSpaceClipLoss(ClipLoss):
    """`ClipLoss` as `fusion.ClipLoss` took it before the move: `logit_scale` in log space (deprecated)."""

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, logit_scale: Scale,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Symmetric InfoNCE with a log-space scale; see `clip_loss`."""
        return clip_loss(emb_a, emb_b, gather=self.gather, valid=valid, log_logit_scale=logit_scale)


DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


class ContrastiveHead(nn.Module):
    """Per-modality projections into one `embed_dim` space plus a learnable temperature.

    `embed(m, pooled)` gives L2-normalised `[B, embed_dim]` embeddings of modality `m` alone. `loss(embeddings,
    present)` averages the symmetric InfoNCE of every aligned pair (default: all pairs of the modalities),
    over the global batch across processes in training mode; rows where either side is absent are left out.
    `logit_scale` is in log space and clamped to `max_logit_scale` (log 100), as in CLIP.
    """

    def __init__(
        self,
        input_dims: dict[str, int],
        embed_dim: int,
        projection: str = "linear",
        hidden_dim: Optional[int] = None,
        dropout: float = 0.0,
        init_logit_scale: float = DEFAULT_LOGIT_SCALE,
        max_logit_scale: float = MAX_LOGIT_SCALE,
        gather: bool = True,
        pairs: Optional[Sequence[Sequence[str]]] = None,
    ) -> None:
        super().__init__()
        if len(input_dims) < 2:
            raise ValueError(f"a contrastive head needs at least two modalities, got {sorted(input_dims)}")
        if projection not in ("linear", "mlp"):
            raise ValueError(f"contrastive head: projection must be 'linear' or 'mlp', got {projection!r}")
        if int(embed_dim) <= 0:
            raise ValueError(f"contrastive head: embed_dim must be positive, got {embed_dim}")
        self.input_dims = {str(m): int(d) for m, d in sorted(input_dims.items())}
        self.modalities = list(self.input_dims)
        self.embed_dim = int(embed_dim)
        hidden = int(hidden_dim or max(self.input_dims.values())) if projection == "mlp" else None
        self.pairs = self._check_pairs(pairs)
        self.max_logit_scale = float(max_logit_scale)
        self.gather = bool(gather)
        self.config_kwargs: dict[str, Any] = {
            "projection": projection,
            "hidden_dim": hidden,
            "dropout": float(dropout),
            "init_logit_scale": float(init_logit_scale),
            "max_logit_scale": float(max_logit_scale),
            "gather": bool(gather),
            "pairs": [list(p) for p in self.pairs],
        }
        self.projections = nn.ModuleDict()
        for m, d in self.input_dims.items():
            if projection == "linear":
                self.projections[m] = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, self.embed_dim, bias=False))
            else:
                self.projections[m] = nn.Sequential(
                    nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, self.embed_dim)
                )
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def _check_pairs(self, pairs: Optional[Sequence[Sequence[str]]]) -> list[tuple[str, str]]:
        if pairs is None:
            return list(itertools.combinations(self.modalities, 2))
        out = []
        for pair in pairs:
            a, b = (str(x) for x in pair)
            if a == b or a not in self.input_dims or b not in self.input_dims:
                raise ValueError(f"contrastive head: pair {list(pair)} must name two different modalities of {self.modalities}")
            out.append((a, b))
        if not out:
            raise ValueError("contrastive head: pairs is empty")
        return out

    def clamped_logit_scale(self) -> torch.Tensor:
        """`logit_scale` clamped to `max_logit_scale` (log space)."""
        return self.logit_scale.clamp(max=self.max_logit_scale)

    def embed(self, modality: str, pooled: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Project one modality's pooled features `[B, D_m]` into the shared space (L2-normalised by default)."""
        if modality not in self.projections:
            raise KeyError(f"contrastive head has no {modality!r} projection; modalities are {self.modalities}")
        if pooled.dim() != 2 or pooled.shape[-1] != self.input_dims[modality]:
            raise ValueError(
                f"contrastive head: {modality} features have shape {tuple(pooled.shape)}, "
                f"expected [B, {self.input_dims[modality]}]"
            )
        out = self.projections[modality](pooled)
        return F.normalize(out, dim=-1) if normalize else out

    def loss(self, embeddings: dict[str, torch.Tensor], present: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Mean symmetric InfoNCE over the aligned pairs found in `embeddings` (normalised, `[B, embed_dim]`).

        In training mode (and with `gather`) each pair's loss spans the global batch across processes; in eval
        mode it uses the local batch only, so an evaluation on one rank cannot hang in a collective.
        """
        losses = []
        for a, b in self.pairs:
            if a not in embeddings or b not in embeddings:
                continue
            valid = None
            if present is not None and (a in present or b in present):
                ones = torch.ones(embeddings[a].shape[0], dtype=torch.bool, device=embeddings[a].device)
                valid = present.get(a, ones).to(ones.device) & present.get(b, ones).to(ones.device)
            losses.append(
                clip_loss(embeddings[a], embeddings[b], self.clamped_logit_scale().exp(),
                          gather=self.gather and self.training, valid=valid)
            )
        if not losses:
            raise ValueError(f"contrastive loss needs both sides of a pair {self.pairs}; got {sorted(embeddings)}")
        return torch.stack(losses).mean() if len(losses) > 1 else losses[0]

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable."""
        return {"input_dims": dict(self.input_dims), "embed_dim": self.embed_dim, **self.config_kwargs}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ContrastiveHead:
        """Rebuild (fresh weights) from `get_config()`."""
        kwargs = dict(config)
        return cls(kwargs.pop("input_dims"), kwargs.pop("embed_dim"), **kwargs)

    def no_weight_decay(self) -> set[str]:
        """The temperature is never decayed."""
        return {"logit_scale"}

    def extra_repr(self) -> str:
        return f"modalities={self.modalities}, embed_dim={self.embed_dim}, pairs={self.pairs}"
