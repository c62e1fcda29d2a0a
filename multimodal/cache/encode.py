"""The fill path's work: load each missing item, preprocess it as for evaluation, run the frozen tower, store.

`encode_batch` is the one place a frozen tower runs for the cache: a faster way to run it (channels_last, bf16,
another backend) changes that function and nothing else. The encoder runs in eval mode with its eval-mode
preprocessing (`get_preprocessor(train=False)`), so cached features never carry training augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from encoders.base import Encoder, EncoderOutput
from multimodal.cache.files import stack_outputs
from multimodal.cache.keys import ABSENT
from multimodal.progress import progress_bar

Store = Callable[[list[str], EncoderOutput], None]
"""Where encoded batches go: ``store(keys, outputs)`` (`FeatureCache.add`)."""


@torch.no_grad()
def encode_batch(encoder: Encoder, preprocess: Callable[[list[Any]], dict], raw: list[Any],
                 device: torch.device) -> EncoderOutput:
    """The frozen `encoder`'s output for raw samples (None: absent) after `preprocess`, computed on `device`."""
    inputs = {n: t.to(device) if isinstance(t, torch.Tensor) else t for n, t in preprocess(raw).items()}
    return encoder(inputs)


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


def encode_items(encoder: Encoder, items: Sequence[tuple[str, Any]], store: Store, *, batch_size: int,
                 shard_size: int, loader: Callable[[str, Any], Any], device: Optional[torch.device | str] = None,
                 show_progress: bool = False) -> dict[str, str]:
    """Encode `items` ((content key, source) pairs) in batches, handing `store` about `shard_size` at a time.

    Returns {key: reason} for the sources that could not be loaded; they are not stored.
    """
    unreadable: dict[str, str] = {}
    if not items:
        return unreadable
    was_training = encoder.training
    encoder.eval()
    preprocess = encoder.get_preprocessor(train=False)
    dev = torch.device(device) if device is not None else next(encoder.parameters()).device
    progress = progress_bar(total=len(items), desc=f"caching {encoder.modality} features",
                            disable=not (show_progress and len(items) > batch_size))
    pending_keys: list[str] = []
    pending: list[EncoderOutput] = []
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            keys, raw = _load(chunk, encoder.modality, loader, unreadable)
            progress.update(len(chunk))
            if keys:
                pending_keys.extend(keys)
                pending.append(encode_batch(encoder, preprocess, raw, dev))
            if pending_keys and (len(pending_keys) >= shard_size or start + batch_size >= len(items)):
                store(*stack_outputs(pending_keys, pending))
                pending_keys, pending = [], []
    finally:
        progress.close()
        encoder.train(was_training)
    return unreadable
