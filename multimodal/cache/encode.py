"""The fill path's work: load each missing item, preprocess it as for evaluation, run the frozen tower, store.

`encode_batch` is the one place a frozen tower runs for the cache: under `torch.inference_mode`, image batches in
channels_last, in the fill's precision (fp32 or bf16 autocast, `multimodal.cache.modes`), or through the tower's
ONNX Runtime session when the fill has one (`multimodal.cache.ort`). `encode_items` holds a
convolutional tower in channels_last for the whole fill. The encoder runs in eval mode with its eval-mode
preprocessing (`get_preprocessor(train=False)`), so cached features never carry training augmentation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import torch

from encoders.base import Encoder, EncoderOutput
from multimodal.cache.files import stack_outputs
from multimodal.cache.keys import ABSENT
from multimodal.cache.modes import (
    AGREEMENT_ITEMS,
    autocast,
    bf16_agreement,
    channels_last_inputs,
    fill_layout,
)
from multimodal.cache.ort import PARITY_ITEMS, OrtTower, parity
from multimodal.progress import progress_bar

Store = Callable[[list[str], EncoderOutput], None]
"""Where encoded batches go: ``store(keys, outputs)`` (`FeatureCache.add`)."""


@torch.inference_mode()
def encode_batch(encoder: Encoder, preprocess: Callable[[list[Any]], dict], raw: list[Any],
                 device: torch.device, precision: str = "fp32", tower: Optional[OrtTower] = None) -> EncoderOutput:
    """The frozen `encoder`'s output for raw samples (None: absent) after `preprocess`, computed on `device` in
    `precision` (``fp32``, or ``bf16`` autocast; outputs come back as float32), or by its ORT `tower` (fp32)."""
    if tower is not None:
        return tower(preprocess(raw))
    device = torch.device(device)
    inputs = {n: t.to(device) if isinstance(t, torch.Tensor) else t for n, t in preprocess(raw).items()}
    with autocast(precision, device):
        out = encoder(channels_last_inputs(inputs))
    return EncoderOutput(*(t.float() if t is not None and t.is_floating_point() else t
                           for t in (out.pooled, out.tokens, out.mask)))


def _load(chunk: Sequence[tuple[str, Any]], modality: str, loader: Callable[[str, Any], Any],
          unreadable: dict[str, str]) -> tuple[list[str], list[Any]]:
    """Keys and raw samples of the items in `chunk` that load; the others go into `unreadable` with the reason."""
    keys, raw = [], []
    for key, source in chunk:
        try:
            raw.append(None if key == ABSENT else loader(modality, source))
            keys.append(key)
        except Exception as err:  # noqa: BLE001 - any failure to decode makes the item unreadable
            unreadable[key] = f"{type(err).__name__}: {err}"
    return keys, raw


@contextlib.contextmanager
def frozen_run(encoder: Encoder, device: Optional[torch.device | str]) -> Iterator[tuple[Callable, torch.device]]:
    """The encoder in eval mode and the fill's layout inside the block, with its eval-mode preprocessor and the
    device to run on (default: its parameters'); its training mode and layout come back after."""
    was_training = encoder.training
    encoder.eval()
    dev = torch.device(device) if device is not None else next(encoder.parameters()).device
    try:
        with fill_layout(encoder):
            yield encoder.get_preprocessor(train=False), dev
    finally:
        encoder.train(was_training)


def encode_items(encoder: Encoder, items: Sequence[tuple[str, Any]], store: Store, *, batch_size: int,
                 shard_size: int, loader: Callable[[str, Any], Any], device: Optional[torch.device | str] = None,
                 show_progress: bool = False, precision: str = "fp32",
                 tower: Optional[OrtTower] = None) -> dict[str, str]:
    """Encode `items` ((content key, source) pairs) in batches in `precision` (or by the ORT `tower`), handing
    `store` about `shard_size` at a time.

    Returns {key: reason} for the sources that could not be loaded; they are not stored.
    """
    unreadable: dict[str, str] = {}
    if not items:
        return unreadable
    progress = progress_bar(total=len(items), desc=f"caching {encoder.modality} features",
                            disable=not (show_progress and len(items) > batch_size))
    pending_keys: list[str] = []
    pending: list[EncoderOutput] = []
    try:
        with frozen_run(encoder, device) as (preprocess, dev):
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                keys, raw = _load(chunk, encoder.modality, loader, unreadable)
                progress.update(len(chunk))
                if keys:
                    pending_keys.extend(keys)
                    pending.append(encode_batch(encoder, preprocess, raw, dev, precision, tower=tower))
                if pending_keys and (len(pending_keys) >= shard_size or start + batch_size >= len(items)):
                    store(*stack_outputs(pending_keys, pending))
                    pending_keys, pending = [], []
    finally:
        progress.close()
    return unreadable


def agreement_on(encoder: Encoder, items: Sequence[tuple[str, Any]], loader: Callable[[str, Any], Any],
                 device: Optional[torch.device | str] = None) -> Optional[tuple[float, list[str], EncoderOutput]]:
    """`bf16_agreement` of the frozen `encoder` on the first `AGREEMENT_ITEMS` readable items, with their keys and
    bf16 output (None: none is readable)."""
    keys, raw = _load(items[:AGREEMENT_ITEMS], encoder.modality, loader, {})
    if not keys:
        return None
    with frozen_run(encoder, device) as (preprocess, dev):
        cosine, bf16 = bf16_agreement(lambda precision: encode_batch(encoder, preprocess, raw, dev, precision))
    return cosine, keys, bf16


def parity_on(encoder: Encoder, tower: OrtTower, items: Sequence[tuple[str, Any]], loader: Callable[[str, Any], Any],
              device: Optional[torch.device | str] = None) -> Optional[tuple[float, float, list[str], EncoderOutput]]:
    """`parity` of the ORT `tower` against the frozen `encoder` in fp32 on the first `PARITY_ITEMS` readable items,
    with their keys and torch output (None: none is readable)."""
    keys, raw = _load(items[:PARITY_ITEMS], encoder.modality, loader, {})
    if not keys:
        return None
    with frozen_run(encoder, device) as (preprocess, dev):
        reference = encode_batch(encoder, preprocess, raw, dev, "fp32")
        diff, cosine = parity(reference, encode_batch(encoder, preprocess, raw, dev, "fp32", tower))
    return diff, cosine, keys, reference
