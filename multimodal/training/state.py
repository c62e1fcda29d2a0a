"""What the Trainer keeps besides tensors: its resumable state, the LR schedule, and tracker settings."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base LR at an optimizer step: linear warmup, then cosine / linear decay or constant."""

    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(max((step - warmup) / max(1, total - warmup), 0.0), 1.0)
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


@dataclass
class TrainerState:
    """Everything besides model/optimizer/scheduler/RNG that a resumed run needs."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already consumed
    global_step: int = 0  # optimizer steps
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    bad_epochs: int = 0
    unfrozen: bool = False
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)
    train_log: list[dict] = field(default_factory=list)


def resolve_log_with(value: str) -> Optional[str]:
    if value == "none":
        return None
    if value == "tensorboard":
        return "tensorboard"
    try:
        import tensorboard  # noqa: F401

        return "tensorboard"
    except ImportError:
        return None


def make_accelerator(config: Any, unfreeze_later: bool = False) -> Any:
    """The Accelerator a `Trainer` makes when given none: mixed precision, accumulation and the tracker from
    the train config. Encoders unfrozen later get gradients only from then on, so DDP must then tolerate
    unused parameters."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    log_with = resolve_log_with(config.log_with)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if unfreeze_later else []
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum_steps,
        log_with=log_with,
        project_dir=os.path.join(config.output_dir, "logs") if log_with else None,
        kwargs_handlers=handlers,
    )


def flat_config(d: dict, prefix: str = "") -> dict:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out
