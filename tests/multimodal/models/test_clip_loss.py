"""clip_loss against a reference written with explicit loops in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fusion.losses import ClipLoss, clip_loss


def _reference(a: torch.Tensor, b: torch.Tensor, log_scale: float, valid: list[bool] | None = None) -> float:
    """Symmetric InfoNCE, one python loop per direction and row, math.exp/log only."""
    n = a.shape[0]
    valid = valid or [True] * n
    idx = [i for i in range(n) if valid[i]]
    s = math.exp(log_scale)
    total = 0.0
    for q, k in ((a, b), (b, a)):
        for i in idx:
            sims = [s * float(sum(q[i, d] * k[j, d] for d in range(q.shape[1]))) for j in idx]
            m = max(sims)
            log_den = m + math.log(sum(math.exp(x - m) for x in sims))
            total += -(sims[idx.index(i)] - log_den)
    return total / (2 * len(idx))


def _emb(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1),
        F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1),
    )


@pytest.mark.parametrize("log_scale", [0.0, math.log(1 / 0.07), math.log(100.0)])
def test_clip_loss_matches_loop_reference(log_scale):
    a, b = _emb(6, 5, seed=1)
    got = clip_loss(a, b, torch.tensor(log_scale, dtype=torch.float64))
    assert got.item() == pytest.approx(_reference(a, b, log_scale), rel=1e-10)
    module = ClipLoss()(a, b, torch.tensor(log_scale, dtype=torch.float64))
    assert torch.equal(module, got)


def test_clip_loss_valid_mask_drops_pairs_as_queries_and_candidates():
    a, b = _emb(7, 4, seed=2)
    valid = [True, False, True, True, False, True, True]
    got = clip_loss(a, b, torch.tensor(2.0, dtype=torch.float64), valid=torch.tensor(valid))
    assert got.item() == pytest.approx(_reference(a, b, 2.0, valid), rel=1e-10)
    # Same as dropping those rows outright.
    keep = torch.tensor(valid)
    dropped = clip_loss(a[keep], b[keep], torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(got, dropped)


def test_clip_loss_gradient_flows_and_perfect_pairs_score_low():
    a, b = _emb(8, 16, seed=3)
    a.requires_grad_(True)
    scale = torch.tensor(math.log(100.0), dtype=torch.float64, requires_grad=True)
    loss = clip_loss(a, b, scale)
    loss.backward()
    assert a.grad.abs().sum() > 0 and scale.grad is not None
    aligned = clip_loss(b, b, torch.tensor(math.log(100.0), dtype=torch.float64))
    assert aligned < loss


def test_clip_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="both be \\[n, D\\]"):
        clip_loss(torch.randn(3, 4), torch.randn(2, 4), torch.tensor(0.0))
