"""clip_loss against a reference written with explicit loops in float64; the scale as open_clip passes it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from multimodal.models.contrastive import ClipLoss, clip_loss


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
    log = torch.tensor(log_scale, dtype=torch.float64)
    got = clip_loss(a, b, log.exp())  # the exponentiated scale, as open_clip's models return it
    assert got.item() == pytest.approx(_reference(a, b, log_scale), rel=1e-10)
    assert torch.equal(clip_loss(a, b, log_logit_scale=log), got)
    assert torch.equal(ClipLoss()(a, b, log.exp()), got)


def test_open_clip_style_scale_100_is_finite_and_equals_log_space():
    a, b = _emb(6, 5, seed=4)
    got = clip_loss(a.float(), b.float(), logit_scale=100.0)  # a plain float, as open_clip users write it
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(_reference(a, b, math.log(100.0)), rel=1e-5)
    torch.testing.assert_close(got, clip_loss(a.float(), b.float(), log_logit_scale=math.log(100.0)))


def test_scales_that_would_overflow_or_make_no_sense_are_refused():
    a, b = _emb(4, 3, seed=5)
    a, b = a.float(), b.float()
    with pytest.raises(ValueError, match=r"log_logit_scale=100 gives a scale of inf.*already exponentiated"):
        clip_loss(a, b, log_logit_scale=100.0)  # exp(100) overflows float32: NaN before this check
    with pytest.raises(ValueError, match=r"logit_scale=100000 .*at most 6.55e\+04 \(larger torch.float16 logits overflow"):
        clip_loss(a.half(), b.half(), logit_scale=1e5)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="must be finite, > 0"):
            clip_loss(a, b, logit_scale=bad)
    with pytest.raises(TypeError, match="exactly one of them"):
        clip_loss(a, b, 10.0, log_logit_scale=2.3)
    with pytest.raises(TypeError, match="exactly one of them"):
        clip_loss(a, b)
    with pytest.raises(ValueError, match="must be one number"):
        clip_loss(a, b, torch.ones(2))


def test_clip_loss_valid_mask_drops_pairs_as_queries_and_candidates():
    a, b = _emb(7, 4, seed=2)
    valid = [True, False, True, True, False, True, True]
    scale = torch.tensor(2.0, dtype=torch.float64).exp()
    got = clip_loss(a, b, scale, valid=torch.tensor(valid))
    assert got.item() == pytest.approx(_reference(a, b, 2.0, valid), rel=1e-10)
    # Same as dropping those rows outright.
    keep = torch.tensor(valid)
    dropped = clip_loss(a[keep], b[keep], scale)
    torch.testing.assert_close(got, dropped)


def test_clip_loss_gradient_flows_and_perfect_pairs_score_low():
    a, b = _emb(8, 16, seed=3)
    a.requires_grad_(True)
    log = torch.tensor(math.log(100.0), dtype=torch.float64, requires_grad=True)
    loss = clip_loss(a, b, log.exp())
    loss.backward()
    assert a.grad.abs().sum() > 0 and log.grad is not None
    aligned = clip_loss(b, b, 100.0)
    assert aligned < loss


def test_clip_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="both be \\[n, D\\]"):
        clip_loss(torch.randn(3, 4), torch.randn(2, 4), 1.0)


def test_old_fusion_names_still_work_with_their_log_space_scale_and_warn():
    a, b = _emb(5, 4, seed=6)
    log = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    expected = clip_loss(a, b, log_logit_scale=log)
    with pytest.warns(DeprecationWarning, match=r"fusion.clip_loss moved to multimodal.models.contrastive"):
        from fusion import clip_loss as old_clip_loss
    with pytest.warns(DeprecationWarning, match=r"fusion.losses.ClipLoss moved"):
        from fusion.losses import ClipLoss as OldClipLoss
    with pytest.warns(DeprecationWarning, match=r"fusion.contrastive.ContrastiveHead moved"):
        from fusion.contrastive import ContrastiveHead as OldHead
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(old_clip_loss(a, b, log, gather=False), expected)  # the old meaning: log space
        assert torch.equal(OldClipLoss(gather=False)(a, b, log), expected)
    from multimodal.models.contrastive import ContrastiveHead

    assert OldHead is ContrastiveHead
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import fusion

        fusion.nope  # noqa: B018
