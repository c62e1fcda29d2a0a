"""The feature cache in the data pipeline: datasets whose frozen modalities come from disk, not from files.

`cache_datasets(model, datasets, cache_dir)` encodes the frozen modalities of every split once (eval-mode
preprocessing, see `multimodal.cache.encode`) and wraps each split in a `CachedFeatureDataset`; the collate
function `CachedFeatureCollator` then puts ``batch["features"] = {modality: EncoderOutput}`` next to the
inputs of the modalities that are still read and preprocessed. ``data.feature_cache`` names the folder
(`resolve_cache_dir`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from multimodal.cache.keys import ABSENT
from multimodal.cache.ort import DEFAULT_BACKEND
from multimodal.cache.store import FeatureCache
from multimodal.data.loading import usable_samples
from multimodal.data.manifest import DataError
from multimodal.data.media import FILE_MODALITIES, describe


class CachedFeatureDataset(Dataset):
    """Wraps a `MultimodalDataset`: cached modalities are not loaded, only their content keys.

    Items are the base items minus the cached modalities, plus ``"feature_keys": {modality: key}``.
    """

    def __init__(self, base: Any, keys: dict[str, list[str]]) -> None:
        self.base = base
        self.keys = keys
        self.view = copy.copy(base)  # same rows/indices; loads only the modalities that are not cached
        self.view.columns = {m: c for m, c in base.columns.items() if m not in keys}

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "keys", "view"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, idx: int) -> dict:
        item = self.view[idx]
        item["feature_keys"] = {m: k[idx] for m, k in self.keys.items()}
        return item


class CachedFeatureCollator:
    """Picklable collate wrapper: the base collator handles the uncached modalities and labels, cached
    modalities come from disk as ``batch["features"] = {modality: EncoderOutput}``."""

    def __init__(self, collator: Callable[[list], dict], caches: dict[str, FeatureCache]) -> None:
        self.collator = collator
        self.caches = caches

    def __call__(self, samples: list[dict]) -> dict:
        samples = usable_samples(samples, getattr(self.collator, "min_samples", 1))  # rows skipped while loading
        batch = self.collator(samples)
        batch.setdefault("inputs", {})
        batch.setdefault("present", {})
        features = {}
        for m, cache in self.caches.items():
            keys = [s["feature_keys"][m] for s in samples]
            features[m] = cache.load(keys)
            batch["present"][m] = torch.tensor([k != ABSENT for k in keys], dtype=torch.bool)
            batch["inputs"].pop(m, None)
        batch["features"] = features
        return batch


def frozen_modalities(model: Any) -> list[str]:
    """Modalities whose encoder has no trainable parameter (candidates for caching)."""
    return [m for m, enc in model.encoders.items() if not any(p.requires_grad for p in enc.parameters())]


def default_cache_dir() -> str:
    """``$MULTIMODAL_CACHE/features`` or ``~/.cache/multimodal-finetune/features``."""
    base = os.environ.get("MULTIMODAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "multimodal-finetune")
    return os.path.join(base, "features")


def resolve_cache_dir(value: Optional[str]) -> Optional[str]:
    """The feature cache directory for a ``data.feature_cache`` value ("auto", a path, or None: off)."""
    if not value:
        return None
    return default_cache_dir() if value == "auto" else value


def cache_datasets(
    model: Any,
    datasets: dict[str, Any],
    cache_dir: str | os.PathLike,
    modalities: Optional[Sequence[str]] = None,
    batch_size: int = 32,
    accelerator: Any = None,
    store_tokens: Optional[bool] = None,
    show_progress: bool = True,
    precision: str = "fp32",
    backend: str = DEFAULT_BACKEND,
) -> tuple[dict[str, Any], dict[str, FeatureCache]]:
    """Encode the frozen modalities of every dataset once (cached on disk) and wrap the datasets.

    `datasets` maps a name (e.g. "train") to a `MultimodalDataset` (None entries pass through). Returns the
    wrapped datasets and the caches; build the collate function with
    ``CachedFeatureCollator(Collator(uncached preprocessors), caches)``. Modalities default to the frozen
    ones; tokens are stored only when the model reads them (`model.requires_tokens`), unless `store_tokens`
    says; `precision` is the towers' (``data.feature_cache_precision``: fp32, bf16 or auto, see
    `multimodal.cache.modes`), `backend` what runs them in fp32 (``data.feature_cache_backend``: torch, onnx or auto, see
    `multimodal.cache.ort`). Features use eval-mode preprocessing: cached modalities get no training augmentation. An item the
    cache cannot read or hash (a file that is missing or does not decode, e.g. under ``data.validate=false``) is
    handled by the dataset's ``on_bad_sample``: `BadSampleError` naming the row, or the row is dropped and counted.
    """
    modalities = frozen_modalities(model) if modalities is None else list(modalities)
    for m in modalities:
        if any(p.requires_grad for p in model.encoders[m].parameters()):
            raise ValueError(f"cannot cache {m} features: its encoder is trainable (freeze it first)")
    if store_tokens is None:
        store_tokens = bool(getattr(model, "requires_tokens", False))
    caches = {m: FeatureCache(model.encoders[m], cache_dir, store_tokens=store_tokens, precision=precision,
                           backend=backend)
              for m in modalities}
    wrapped: dict[str, Any] = {}
    for name, ds in datasets.items():
        if ds is None or not modalities:
            wrapped[name] = ds
            continue
        keys: dict[str, list[str]] = {}
        bad: dict[int, tuple[str, str]] = {}  # item -> (modality, message): could not be read or hashed
        for m in modalities:
            if m not in ds.columns:
                continue
            sources = [ds.source_of(i, m) for i in range(len(ds))]
            errors: dict[int, str] = {}
            keys[m] = caches[m].build(sources, batch_size=batch_size, accelerator=accelerator,
                                      show_progress=show_progress, errors=errors,
                                      loader=getattr(ds, "load_source", None))  # the dataset's media limits
            for i, reason in errors.items():
                where = describe(sources[i], None) if m in FILE_MODALITIES else ""
                bad.setdefault(i, (m, f"{m} column {ds.columns[m]!r}{where}: {reason}"))
        if bad:
            ds.discard(bad)  # on_bad_sample="error": BadSampleError naming the first row; "skip": counted
            keys = {m: [k for i, k in enumerate(ks) if i not in bad] for m, ks in keys.items()}
            if not len(ds):
                raise DataError(f"{ds.source}: no usable rows left in the {name} split ({ds.skipped.to_dict()})")
        wrapped[name] = CachedFeatureDataset(ds, keys)
    return wrapped, caches
