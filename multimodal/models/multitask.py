"""Several task heads on one fused representation: `MultiTaskHead` and the `MultiTaskModel` that saves it.

The head runs one `TaskHead` per task on the same fused vector and concatenates their outputs. Labels come
packed the same way (`multimodal.data.multitask`): a class index for single-label tasks, 0/1 per class for
multi-label, the values for regression, NaN where a row has no label for a task. The loss is
``sum_t weight_t * mean over the rows labelled for t of loss_t``; a task with no labelled row in a batch adds
nothing. Masking is arithmetic (no data-dependent branches), so no host sync per step.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from encoders import Encoder
from fusion import fusion_from_config
from multimodal.models.base import register_model_type
from multimodal.models.fused import MultimodalModel
from multimodal.models.heads import LabelTyped, TaskHead


class MultiTaskHead(LabelTyped, nn.Module):
    """`tasks`: dicts with ``name``, ``task`` (single_label / multi_label / regression), ``num_outputs``,
    ``weight`` and optionally ``column`` and ``labels`` (kept in the config so a saved model describes itself)."""

    label_type = "multitask"  # labels packed per task (see the module docstring)

    def __init__(self, in_dim: int, tasks: list[dict[str, Any]], hidden_dim: Optional[int] = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskHead needs at least one task")
        self.in_dim, self.hidden_dim, self.dropout_p = int(in_dim), hidden_dim, float(dropout)
        self.tasks = [dict(t) for t in tasks]
        self.heads = nn.ModuleDict({t["name"]: TaskHead(in_dim, int(t["num_outputs"]), t["task"], hidden_dim, dropout)
                                    for t in self.tasks})
        self.num_outputs = sum(int(t["num_outputs"]) for t in self.tasks)

    def slices(self) -> list[tuple[dict[str, Any], slice, slice]]:
        """(task, its columns in the logits, its slots in the packed labels) per task."""
        out, o, lab = [], 0, 0
        for t in self.tasks:
            n = int(t["num_outputs"])
            width = 1 if t["task"] == "single_label" else n
            out.append((t, slice(o, o + n), slice(lab, lab + width)))
            o, lab = o + n, lab + width
        return out

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """Every task's logits (or values), concatenated: `[B, num_outputs]`."""
        return torch.cat([self.heads[t["name"]](fused) for t in self.tasks], dim=-1)

    def task_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each task's loss, averaged over the rows labelled for it (0 when none is)."""
        labels = labels.to(logits.device, torch.float32)
        if labels.dim() == 1:
            labels = labels.unsqueeze(-1)
        losses = {}
        for t, cols, slots in self.slices():
            out, y = logits[:, cols].float(), labels[:, slots]
            valid = ~torch.isnan(y).any(dim=1)
            y = torch.nan_to_num(y)
            if t["task"] == "single_label":
                target = y[:, 0].long().clamp(0, out.shape[1] - 1)
                per = F.cross_entropy(out, target, reduction="none")
            elif t["task"] == "multi_label":
                per = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(dim=1)
            else:
                per = ((out - y) ** 2).mean(dim=1)
            weight = valid.to(per.dtype)
            losses[t["name"]] = (per * weight).sum() / weight.sum().clamp_min(1.0)
        return losses

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the task losses."""
        losses = self.task_losses(logits, labels)
        return sum(float(t.get("weight", 1.0)) * losses[t["name"]] for t in self.tasks)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable."""
        return {"kind": "multitask", "in_dim": self.in_dim, "tasks": self.tasks, "hidden_dim": self.hidden_dim,
                "dropout": self.dropout_p}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MultiTaskHead:
        """Rebuild (fresh weights) from `get_config()`."""
        kwargs = {k: v for k, v in config.items() if k != "kind"}
        return cls(**kwargs)


@register_model_type("multitask")
class MultiTaskModel(MultimodalModel):
    """A `MultimodalModel` whose head is a `MultiTaskHead` (its own model type, so `load_model` rebuilds it)."""

    @classmethod
    def _from_config(cls, config: dict[str, Any], encoders: dict[str, Encoder]) -> MultiTaskModel:
        if not isinstance(config.get("fusion"), dict) or not isinstance(config.get("head"), dict):
            raise ValueError("config.json: a multitask model needs 'fusion' and 'head' objects")
        return cls(encoders, fusion=fusion_from_config(config["fusion"]), head=MultiTaskHead.from_config(config["head"]),
                   modality_dropout=config.get("modality_dropout", 0.0))
