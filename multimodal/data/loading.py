"""Batches: a picklable collate function running the encoders' preprocessors, and deterministic epoch order.

Batches follow one contract::

    {"inputs": {modality: dict[str, Tensor]}, "present": {modality: BoolTensor[B]},
     "labels": Tensor (omitted without labels), "index": LongTensor[B],
     "features": {modality: EncoderOutput} (only for modalities read from the feature cache)}

The training order depends only on (seed, epoch) (`EpochSampler`), and random augmentation is seeded per
batch from (seed, epoch, sample indices) without touching the global RNGs (`Collator`), so a resumed run
sees the same batches and augmentations as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from multimodal.data.manifest import DataError

SKIPPED = "skipped"
"""Key of the marker item a dataset returns for a row it skipped while loading (its value: the reason)."""


def usable_samples(samples: list[dict], min_samples: int = 1) -> list[dict]:
    """`samples` without the rows skipped while loading; `DataError` naming them if fewer than
    ``min(min_samples, len(samples))`` remain (a batch cannot be empty; BatchNorm needs two when training)."""
    kept = [s for s in samples if SKIPPED not in s]
    if len(kept) < min(min_samples, len(samples)):
        reasons = "; ".join(s[SKIPPED] for s in samples if SKIPPED in s)
        raise DataError(f"{len(samples) - len(kept)} of the {len(samples)} rows of a batch are bad, too few remain "
                        f"to train on: {reasons}. With this much bad data, set data.validate=true so bad rows are "
                        "dropped before batches are formed")
    return kept


def epoch_seed(seed: int, epoch: int) -> int:
    """The one seed of an epoch's shuffling, augmentation and worker seeding."""
    return int(seed) * 100003 + int(epoch)


class SeededIndex(int):
    """A dataset index (an ordinary int everywhere) that also carries its epoch's augmentation seed."""

    seed: int

    def __new__(cls, value: int, seed: int) -> SeededIndex:
        obj = int.__new__(cls, value)
        obj.seed = seed
        return obj

    def __reduce__(self) -> tuple:
        return (SeededIndex, (int(self), self.seed))


@contextlib.contextmanager
def seeded_rngs(seed_words: list[int]) -> Iterator[None]:
    """Seed torch, numpy and python RNGs from `seed_words` for the block, then restore their states."""
    torch_state, np_state, py_state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    a, b, c = np.random.SeedSequence(seed_words).generate_state(3)
    torch.manual_seed(int(a))
    np.random.seed(int(b))
    random.seed(int(c))
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


class Collator:
    """Picklable collate function: applies each modality's encoder preprocessor to raw samples.

    `preprocessors` maps modality -> preprocessor (from `model.get_preprocessors(train)`); absent samples
    are passed as None and flagged ``present=False``. `label_type` (single_label / multi_label / regression)
    decides the label tensor's dtype and shape. Rows the dataset skipped while loading are left out.
    """

    def __init__(self, preprocessors: dict[str, Callable[[list], dict]], label_type: Optional[str] = "single_label",
                 batch_transform: Optional[Callable[[dict], dict]] = None, min_samples: int = 1) -> None:
        self.preprocessors = dict(sorted(preprocessors.items()))
        self.label_type = label_type
        self.batch_transform = batch_transform  # e.g. mixup (multimodal.data.augment), seeded like the rest
        self.min_samples = min_samples  # left after rows skipped while loading (see `usable_samples`)

    def __call__(self, samples: list[dict]) -> dict:
        samples = usable_samples(samples, self.min_samples)
        batch: dict[str, Any] = {"inputs": {}, "present": {}}
        aug_seed = samples[0].get("aug_seed") if samples else None
        context = (
            seeded_rngs([int(aug_seed)] + [int(s["index"]) for s in samples])
            if aug_seed is not None and self.preprocessors
            else contextlib.nullcontext()  # nothing to augment (e.g. every modality read from the feature cache)
        )
        with context:
            for modality, preprocess in self.preprocessors.items():
                raw = [s.get(modality) for s in samples]
                batch["inputs"][modality] = preprocess(raw)
                batch["present"][modality] = torch.tensor([r is not None for r in raw], dtype=torch.bool)
        if samples and "label" in samples[0]:
            labels = [s["label"] for s in samples]
            if self.label_type == "single_label":
                batch["labels"] = torch.tensor(labels, dtype=torch.long)
            else:
                stacked = torch.from_numpy(np.stack(labels)).float()
                if self.label_type == "regression" and stacked.shape[-1] == 1:
                    stacked = stacked[:, 0]
                batch["labels"] = stacked
        batch["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
        if self.batch_transform is not None and aug_seed is not None:
            with seeded_rngs([int(aug_seed), *(int(s["index"]) for s in samples), 1]):  # own stream, same seeding
                batch = self.batch_transform(batch)
        return batch


def item_groups(keys: Sequence[Any]) -> list[list[int]]:
    """Row positions grouped by key, groups in first-seen order."""
    groups: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(str(key), []).append(row)
    return list(groups.values())


class EpochSampler(Sampler[int]):
    """Deterministic shuffling whose order depends only on (seed, epoch): a resumed run sees the same order.

    With `groups` (lists of row positions, e.g. the captions of one item) each epoch yields one randomly
    chosen row per group, groups shuffled, so an item never appears twice in an epoch (and so never twice
    in a local or gathered batch, and never as its own negative in InfoNCE); over epochs every row is used.
    Without, every row once. `set_epoch` is called by accelerate's prepared loader; no global RNG is used.
    Indices are `SeededIndex` values carrying the epoch's augmentation seed for the `Collator`.
    """

    def __init__(self, length: int, seed: int = 0, groups: Optional[list[list[int]]] = None) -> None:
        self.groups = groups
        self.length = len(groups) if groups is not None else int(length)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation (and rows) for `epoch`."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        seed = epoch_seed(self.seed, self.epoch)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.length, generator=g).tolist()
        if self.groups is None:
            return iter([SeededIndex(i, seed) for i in order])
        picks = torch.randint(0, 2**31 - 1, (self.length,), generator=g).tolist()
        return iter([SeededIndex(self.groups[k][picks[k] % len(self.groups[k])], seed) for k in order])

    def __len__(self) -> int:
        return self.length


def make_dataloader(
    dataset: Dataset,
    collate_fn: Callable,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 2,
    seed: int = 0,
    drop_last: bool = False,
    groups: Optional[list[list[int]]] = None,
) -> DataLoader:
    """A DataLoader with deterministic shuffling (optionally one row per group), persistent workers and its
    own generator for worker seeds."""
    sampler = EpochSampler(len(dataset), seed, groups) if shuffle else None
    generator = torch.Generator().manual_seed(seed)  # worker seeds come from here, not the global RNG
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        generator=generator,
    )
