"""Paired data: media decoding, manifests, validated datasets, splits, batches and built-in demos."""

from multimodal.data.dataset import BadSampleError, DataError, MultimodalDataset, SkipCounts
from multimodal.data.demos import Demo, get_demo, list_demos, make_demo, register_demo
from multimodal.data.labels import LabelVocab
from multimodal.data.loading import (
    Collator,
    EpochSampler,
    SeededIndex,
    epoch_seed,
    item_groups,
    make_dataloader,
)
from multimodal.data.manifest import is_missing, read_manifest
from multimodal.data.media import load_audio, load_image, load_sample, resolve_path
from multimodal.data.partition import assign_splits
from multimodal.data.splits import DataSplits, build_splits, write_splits

__all__ = [
    "BadSampleError",
    "Collator",
    "DataError",
    "DataSplits",
    "Demo",
    "EpochSampler",
    "LabelVocab",
    "MultimodalDataset",
    "SeededIndex",
    "SkipCounts",
    "assign_splits",
    "build_splits",
    "epoch_seed",
    "get_demo",
    "is_missing",
    "item_groups",
    "list_demos",
    "load_audio",
    "load_image",
    "load_sample",
    "make_dataloader",
    "make_demo",
    "read_manifest",
    "register_demo",
    "resolve_path",
    "write_splits",
]
