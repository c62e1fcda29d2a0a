"""The LR schedule on transformers' get_scheduler: the same LR at every step as the hand-written schedule it
replaced (from the end of warmup on), transformers' ramp during warmup, and a schedule continued mid-way."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from multimodal.training.schedule import lr_multiplier, make_scheduler


def _hand_written(kind: str, warmup: int, total: int, step: int) -> float:
    """The multiplier the framework computed before transformers' schedule replaced it."""
    if warmup > 0 and step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = min(max((step - warmup) / max(1, total - warmup), 0.0), 1.0)
    return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimizer(lrs=(1e-3, 2e-5)) -> torch.optim.Optimizer:
    return torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs])


def _lrs(scheduler, steps: int) -> list[list[float]]:
    seen = []
    for _ in range(steps):
        seen.append(scheduler.get_last_lr())
        scheduler.optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup", [0, 4])
def test_every_step_matches_the_replaced_schedule_after_warmup(kind, warmup):
    total = 23
    cfg = SimpleNamespace(scheduler=kind, warmup_steps=warmup, warmup_ratio=0.0)
    seen = _lrs(make_scheduler(_optimizer(), cfg, total), total)
    for step, lrs in enumerate(seen):
        expected = step / warmup if step < warmup else _hand_written(kind, warmup, total, step)
        assert lrs == pytest.approx([1e-3 * expected, 2e-5 * expected], rel=1e-12, abs=1e-18), (kind, warmup, step)
        assert lr_multiplier(kind, warmup, total)(step) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_warmup_ratio_and_a_schedule_started_mid_way():
    cfg = SimpleNamespace(scheduler="cosine", warmup_steps=None, warmup_ratio=0.25)
    full = _lrs(make_scheduler(_optimizer(), cfg, 20), 20)
    assert full[0] == [0.0, 0.0] and full[5] == pytest.approx([1e-3, 2e-5])  # warmup: 0.25 * 20 = 5 steps
    continued = _lrs(make_scheduler(_optimizer(), cfg, 20, start_step=7), 13)
    assert continued == full[7:]
