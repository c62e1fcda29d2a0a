"""Small shared helpers: batches to a device, JSON written atomically, the process state under accelerate."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch

from encoders.base import jsonable


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


def deep_merge(base: dict, extra: dict) -> dict:
    """`base` updated by `extra`, recursing into nested dicts (neither input is modified)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def write_text(path: str | os.PathLike, text: str) -> str:
    """Write `text` to `path` atomically: a reader sees the old file or the whole new one, never a torn one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> str:
    """Write `obj` (made JSON-ready by `encoders.base.jsonable`) to `path` atomically."""
    return write_text(path, json.dumps(jsonable(obj), indent=indent))


def process_state(timeout_s: float | None = None) -> Any:
    """accelerate's `PartialState`, honouring ``ACCELERATE_USE_CPU`` (as `Accelerator` does) so that
    ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`` runs DDP on CPU (gloo).
    `timeout_s` bounds every collective of the process group (it applies where the group is first set up)."""
    from datetime import timedelta

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    kwargs = {"timeout": timedelta(seconds=float(timeout_s))} if timeout_s else {}
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), **kwargs)
