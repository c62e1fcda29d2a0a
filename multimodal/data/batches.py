"""Batches as the loaders yield them: nested dicts, lists and named tuples of tensors."""

from __future__ import annotations

from typing import Any

import torch


def to_device(batch: Any, device: torch.device | str, non_blocking: bool = True) -> Any:
    """Move every tensor in a nested batch (dicts, lists, tuples, named tuples such as `EncoderOutput`) to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch
