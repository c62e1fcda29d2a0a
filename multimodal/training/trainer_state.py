"""What a `Trainer` keeps besides the model and optimizer: the progress and early-stopping state a resumed run
needs (`TrainerState`, saved as ``trainer_state.json`` in every checkpoint) and an epoch's running losses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


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


class EpochLosses:
    """An epoch's running training losses, kept on the device so that no optimizer step waits for the host: the
    sum since the last log line, the sum over the epoch, and the optimizer step of the first non-finite loss."""

    def __init__(self, device: torch.device, global_step: int) -> None:
        self.window, self.window_n = torch.zeros((), device=device), 0
        self.epoch, self.epoch_n = torch.zeros((), device=device), 0
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.step = torch.full((), global_step, dtype=torch.long, device=device)  # no per-step host-to-device copy

    def add(self, loss: torch.Tensor) -> None:
        """Count one batch's loss."""
        value = loss.detach().float()
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(value), self.step, self.first_bad)
        self.window += value
        self.window_n += 1
        self.epoch += value
        self.epoch_n += 1

    def window_mean(self, accelerator: Any) -> float:
        """Mean loss since the last call, averaged across processes (a host sync); starts the next window."""
        mean = float(accelerator.reduce(self.window, reduction="mean")) / max(self.window_n, 1)
        self.window.zero_()
        self.window_n = 0
        return mean

    def epoch_mean(self, accelerator: Any) -> Optional[float]:
        """Mean over this epoch's batches (those run since a mid-epoch resume), averaged across processes."""
        return float(accelerator.reduce(self.epoch, reduction="mean")) / self.epoch_n if self.epoch_n else None
