"""On-disk cache of frozen-encoder features, so a locked tower encodes each item once.

One module per concern:

* `keys`: what an entry is keyed by: the encoder's fingerprint (spec, configs, preprocessing, weights hash)
  names the folder, the item's content hash names the entry, so stale features are never read.
* `files`: the shards on disk (``shard-<id>.safetensors`` + ``shard-<id>.json`` and ``meta.json``), written
  atomically and never modified, so several processes (DDP ranks) can add shards concurrently; damaged or
  orphaned files are repaired, not trusted.
* `encode`: the fill path's work: load, eval-mode preprocessing (no augmentation), the frozen tower
  (`encode_batch`, the one place it runs).
* `modes`: how the tower runs there: channels_last for convolutional towers, fp32 or bf16 (``auto``: bf16 where
  the hardware has it and the features agree with fp32), under `torch.inference_mode`.
* `ort`: the ONNX Runtime backend (``data.feature_cache_backend``): the tower exported once into its folder, kept
  after a parity check against torch fp32 (``auto``: where onnxruntime is installed and the fill is large enough).
* `store`: `FeatureCache`, the index over one encoder's folder: `build` fills what is missing, `load` reads.
* `datasets`: the cache in the data pipeline: `cache_datasets` wraps each split so that batches carry
  ``features`` for the cached modalities (`CachedFeatureCollator`).

Use the cache only for encoders that stay frozen and would not be augmented anyway.
"""

from multimodal.cache.datasets import (
    CachedFeatureCollator,
    CachedFeatureDataset,
    cache_datasets,
    default_cache_dir,
    frozen_modalities,
    resolve_cache_dir,
)
from multimodal.cache.encode import encode_batch, encode_items
from multimodal.cache.keys import (
    ABSENT,
    UNREADABLE,
    content_key,
    encoder_fingerprint,
    encoder_key_parts,
    file_hash,
    weights_hash,
)
from multimodal.cache.modes import PRECISIONS, native_bf16
from multimodal.cache.ort import BACKENDS, DEFAULT_BACKEND
from multimodal.cache.store import FeatureCache

__all__ = [
    "ABSENT",
    "BACKENDS",
    "DEFAULT_BACKEND",
    "PRECISIONS",
    "UNREADABLE",
    "CachedFeatureCollator",
    "CachedFeatureDataset",
    "FeatureCache",
    "cache_datasets",
    "content_key",
    "default_cache_dir",
    "encode_batch",
    "encode_items",
    "encoder_fingerprint",
    "encoder_key_parts",
    "file_hash",
    "frozen_modalities",
    "native_bf16",
    "resolve_cache_dir",
    "weights_hash",
]
