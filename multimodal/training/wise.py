"""WiSE-FT (Wortsman et al. 2022): interpolate the starting and the fine-tuned weights, pick alpha on validation.

``theta(alpha) = (1 - alpha) * theta_start + alpha * theta_finetuned`` for every floating-point parameter and
buffer (integer buffers such as BatchNorm's step counters come from the fine-tuned model). alpha = 0 is the
starting model (pretrained encoders with the head as initialised or probed), alpha = 1 plain fine-tuning.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state (the starting point of fine-tuning)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@torch.no_grad()
def interpolate(model: nn.Module, start: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor],
                alpha: float) -> None:
    """Load ``(1 - alpha) * start + alpha * finetuned`` into `model` (same keys as its state dict)."""
    mixed = {}
    for k, end in finetuned.items():
        if k not in start:
            raise KeyError(f"WiSE-FT: {k!r} is not in the starting weights (was the model changed after snapshot?)")
        begin = start[k].to(end.device)
        mixed[k] = torch.lerp(begin, end, float(alpha)) if end.is_floating_point() else end
    model.load_state_dict(mixed, strict=True)


def wise_ft_sweep(trainer: Any, task: Any, model: nn.Module, start: dict[str, torch.Tensor], alphas: list[float],
                  val_dataset: Any) -> dict[str, Any]:
    """Evaluate every alpha on the validation loader, load the best into `model`; returns the sweep."""
    finetuned = snapshot(model)
    metric, mode = trainer.metric_for_best, trainer.metric_mode
    rows, best, best_alpha = [], None, None
    for alpha in sorted(float(a) for a in alphas):  # in [0, 1]: checked with the train config
        interpolate(model, start, finetuned, alpha)
        metrics = task.evaluate(trainer.predict(trainer.eval_loader), val_dataset, model, full=False).metrics
        value = metrics.get(metric)
        rows.append({"alpha": alpha, **{k: v for k, v in metrics.items() if isinstance(v, float)}})
        if value is None or math.isnan(value):
            continue
        # ties go to the larger alpha (closer to plain fine-tuning), as alphas ascend
        if best is None or (value >= best if mode == "max" else value <= best):
            best, best_alpha = value, alpha
    if best_alpha is None:
        best_alpha = 1.0
    interpolate(model, start, finetuned, best_alpha)
    return {"alpha": best_alpha, "metric": metric, "sweep": rows}
