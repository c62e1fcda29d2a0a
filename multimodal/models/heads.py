"""Task heads: single-label classification, multi-label classification and regression."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

LABEL_TYPES = ("single_label", "multi_label", "regression")  # the label types a head can learn


def __getattr__(name: str) -> Any:
    if name == "TASKS":  # the old name (a label type is not a task); kept for one release
        warnings.warn("multimodal.models.heads.TASKS is deprecated: use LABEL_TYPES", DeprecationWarning, stacklevel=2)
        return LABEL_TYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LabelTyped:
    """A head that knows its `label_type`; its old name `task` still reads, with a DeprecationWarning."""

    label_type: str = ""

    @property
    def task(self) -> str:
        """Deprecated name of `label_type`."""
        warnings.warn(f"{type(self).__name__}.task is deprecated: use .label_type (a label type, not a task)",
                      DeprecationWarning, stacklevel=2)
        return self.label_type


class TaskHead(LabelTyped, nn.Module):
    """Maps fused features `[B, in_dim]` to `[B, num_outputs]` logits (or values) and knows its loss.

    single_label: cross-entropy with LongTensor[B] labels; multi_label: BCE-with-logits with 0/1
    FloatTensor[B, C] labels; regression: MSE with FloatTensor[B] (num_outputs == 1) or [B, K] labels.
    """

    def __init__(
        self,
        in_dim: int,
        num_outputs: int,
        label_type: str = "single_label",
        hidden_dim: Optional[int] = None,
        dropout: float = 0.0,
        *,
        task: Optional[str] = None,
    ) -> None:
        super().__init__()
        if task is not None:
            warnings.warn("TaskHead(task=...) is deprecated: pass label_type=...", DeprecationWarning, stacklevel=2)
            label_type = task
        if label_type not in LABEL_TYPES:
            raise ValueError(f"TaskHead: label_type must be one of {LABEL_TYPES}, got {label_type!r}")
        if in_dim <= 0 or num_outputs <= 0:
            raise ValueError(
                f"TaskHead: in_dim and num_outputs must be positive, got {in_dim}, {num_outputs}"
            )
        if label_type == "single_label" and num_outputs < 2:
            raise ValueError("TaskHead: single_label needs num_outputs >= 2 classes")
        self.in_dim = int(in_dim)
        self.num_outputs = int(num_outputs)
        self.label_type = label_type
        self.hidden_dim = int(hidden_dim) if hidden_dim else None
        self.dropout_p = float(dropout)
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if self.hidden_dim:
            layers += [nn.Linear(in_dim, self.hidden_dim), nn.GELU(), nn.Dropout(dropout)]
            layers.append(nn.Linear(self.hidden_dim, num_outputs))
        else:
            layers.append(nn.Linear(in_dim, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """Logits (classification) or predictions (regression), `[B, num_outputs]`."""
        if fused.dim() != 2 or fused.shape[-1] != self.in_dim:
            raise ValueError(f"TaskHead expects [B, {self.in_dim}] features, got {tuple(fused.shape)}")
        return self.net(fused)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task's loss, averaged over the batch; the error says what label shape/dtype was expected."""
        batch = logits.shape[0]
        labels = labels.to(logits.device)
        if self.label_type == "single_label":
            if labels.is_floating_point() and labels.shape == (batch, self.num_outputs):  # soft targets (mixup)
                return F.cross_entropy(logits, labels.to(logits.dtype))
            if labels.shape != (batch,) or labels.is_floating_point():
                raise ValueError(
                    f"single_label labels must be an integer tensor of shape ({batch},), "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
            bad = (labels < 0) | (labels >= self.num_outputs)
            if labels.device.type == "cpu":
                if bad.any():
                    raise ValueError(
                        f"single_label labels must lie in [0, {self.num_outputs}); got {labels[bad][:5].tolist()}"
                    )
            else:  # checked on the device, so the training loop does not wait on the host every step
                torch._assert_async(~bad.any(), f"single_label labels must lie in [0, {self.num_outputs})")
            return F.cross_entropy(logits, labels.long())
        if self.label_type == "multi_label":
            if labels.shape != (batch, self.num_outputs):
                raise ValueError(
                    f"multi_label labels must have shape ({batch}, {self.num_outputs}), got {tuple(labels.shape)}"
                )
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        if labels.dim() == 1 and self.num_outputs == 1:
            labels = labels.unsqueeze(-1)
        if labels.shape != (batch, self.num_outputs):
            raise ValueError(
                f"regression labels must have shape ({batch},) or ({batch}, {self.num_outputs}), got {tuple(labels.shape)}"
            )
        return F.mse_loss(logits, labels.to(logits.dtype))

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable."""
        return {
            "in_dim": self.in_dim,
            "num_outputs": self.num_outputs,
            "label_type": self.label_type,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout_p,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TaskHead:
        """Rebuild (fresh weights) from `get_config()`, also as saved before ``task`` became ``label_type``."""
        kwargs = dict(config)
        if "task" in kwargs:
            kwargs.setdefault("label_type", kwargs.pop("task"))
        return cls(**kwargs)

    def extra_repr(self) -> str:
        return f"label_type={self.label_type!r}, in_dim={self.in_dim}, num_outputs={self.num_outputs}"
