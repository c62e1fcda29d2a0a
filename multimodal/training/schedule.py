"""The learning-rate schedule of a run: transformers' `get_scheduler`, stepped once per optimizer step.

``train.scheduler`` picks the shape after a linear warmup: ``cosine`` (to 0), ``linear`` (to 0) or ``constant``
(transformers' ``constant_with_warmup``). The warmup lasts ``train.warmup_steps`` optimizer steps, or
``train.warmup_ratio`` of all of them. As in transformers, the multiplier at step ``s < warmup`` is
``s / warmup``: the first update runs at LR 0 (it only primes AdamW's moments) and the full LR is reached at
step ``warmup``. (Before transformers' schedule replaced the hand-written one, the ramp was
``(s + 1) / (warmup + 1)``; every step from ``warmup`` on is unchanged.)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from transformers import get_scheduler

# train.scheduler -> transformers' SchedulerType name
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def warmup_steps(config: Any, total_steps: int) -> int:
    """Warmup length in optimizer steps: ``warmup_steps`` if set, else ``warmup_ratio`` of `total_steps`."""
    if config.warmup_steps is not None:
        return int(config.warmup_steps)
    return int(config.warmup_ratio * total_steps)


def make_scheduler(optimizer: torch.optim.Optimizer, config: Any, total_steps: int,
                   start_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR scheduler for a `TrainConfig` over `total_steps` optimizer steps, positioned at `start_step` (a
    federated client's later round continues the schedule where the earlier rounds left it)."""
    scheduler = get_scheduler(SCHEDULES[config.scheduler], optimizer,
                              num_warmup_steps=warmup_steps(config, total_steps), num_training_steps=total_steps)
    with warnings.catch_warnings():  # stepping before any optimizer step is the point here
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        for _ in range(start_step):
            scheduler.step()
    return scheduler


def lr_multiplier(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """The factor of the base LR at each optimizer step, as `make_scheduler` applies it (for plots and tests)."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return get_scheduler(SCHEDULES[kind], probe, num_warmup_steps=warmup, num_training_steps=total).lr_lambdas[0]
