"""How a frozen tower runs for the feature cache: its precision and memory layout.

* **precision** (``data.feature_cache_precision``): ``fp32``; ``bf16`` (autocast); or ``auto``: bf16 where the
  device computes it natively (a CPU with AVX-512 BF16 or AMX, a GPU that supports bf16) and the tower's bf16
  features agree with its fp32 features on the first items of the fill (`bf16_agreement` at least
  `MIN_BF16_COSINE`), fp32 otherwise. The precision is part of the cache key: bf16 and fp32 features never share a
  folder.
* **layout**: convolutional towers (timm CNNs, the mel front ends' backbones) run in ``channels_last`` during the
  fill (equal to NCHW within float rounding, about 1.8x faster on a CPU) and are put back in the default layout
  after, so a model saved later stores contiguous tensors.
* always under `torch.inference_mode`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from encoders.base import EncoderOutput

PRECISIONS = ("auto", "fp32", "bf16")
MIN_BF16_COSINE = 0.99
"""Smallest cosine similarity, item by item, of a tower's bf16 and fp32 pooled features for ``auto`` to keep bf16
(EfficientNet-Lite0 on real photos: 0.996)."""
AGREEMENT_ITEMS = 8
"""How many of the first items of a fill `auto` encodes in both precisions to decide."""
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (/proc/cpuinfo ``flags`` or ``Features``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """True where bf16 matrix products run in hardware: a bf16-capable GPU, or a CPU with AVX-512 BF16 / AMX
    (or Arm's BF16 extension) under oneDNN. Elsewhere bf16 is emulated and slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    flags = cpu_flags()
    return bool(flags & NATIVE_BF16_CPU_FLAGS) or (os.uname().machine == "aarch64" and "bf16" in flags)


def check_precision(precision: str) -> str:
    """`precision` if it is one of `PRECISIONS`, else a ValueError naming the option."""
    if precision not in PRECISIONS:
        raise ValueError(f"data.feature_cache_precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def first_choice(precision: str, device: torch.device | str) -> str:
    """The precision a fill starts from: ``fp32``/``bf16`` as asked; ``auto``: bf16 where it is native."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def is_convolutional(encoder: nn.Module) -> bool:
    """True when the tower holds 2-D convolutions (channels_last pays off)."""
    return any(isinstance(m, nn.Conv2d) for m in encoder.modules())


@contextlib.contextmanager
def fill_layout(encoder: nn.Module) -> Iterator[None]:
    """Run a convolutional `encoder` in channels_last inside the block; put its weights back after."""
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    if not convs or not convs[0].weight.is_contiguous():  # nothing to convert, or a layout the caller chose
        yield
        return
    encoder.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        encoder.to(memory_format=torch.contiguous_format)


def channels_last_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """4-D tensors (image batches) in channels_last; everything else as it is."""
    return {n: t.contiguous(memory_format=torch.channels_last) if isinstance(t, torch.Tensor) and t.ndim == 4 else t
            for n, t in inputs.items()}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` for ``bf16``; nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bf16_agreement(run: Callable[[str], EncoderOutput]) -> tuple[float, EncoderOutput]:
    """Smallest cosine similarity, item by item, of the pooled features `run("bf16")` and `run("fp32")` give, and
    the bf16 output (kept when bf16 is)."""
    bf16 = run("bf16")
    fp32 = run("fp32").pooled.float().flatten(1)
    cosine = torch.nn.functional.cosine_similarity(bf16.pooled.float().flatten(1), fp32, dim=1, eps=1e-12)
    return float(cosine.min()), bf16
