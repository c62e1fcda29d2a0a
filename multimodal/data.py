"""Paired-data pipeline: manifests or `datasets` tables -> validated splits -> collated batches.

Sources: CSV / JSONL / Parquet manifests (relative file paths resolve against the manifest's folder),
or a `datasets.Dataset` / `DatasetDict` (image columns may hold PIL images, audio columns dicts with
``array`` + ``sampling_rate``). Splits are given (separate manifests, a split column, DatasetDict keys)
or made from one table with a seed and fractions (stratified for single-label when every class has at
least two rows).

Every row is validated once when a split is built: files are opened, labels checked. A bad row raises
`BadSampleError` naming the source, row and field; with ``on_bad_sample="skip"`` it is dropped and
counted in `MultimodalDataset.skipped`. A missing value (empty cell, None, NaN) for an optional
modality is not an error: the sample gets ``present=False`` and the encoder's preprocessor receives
None (a neutral placeholder).

Batches (from `Collator`, run inside DataLoader workers) follow the shared contract::

    {"inputs": {modality: dict[str, Tensor]}, "present": {modality: BoolTensor[B]},
     "labels": Tensor (omitted without labels), "index": LongTensor[B]}
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

MODALITIES = ("text", "image", "audio")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


class BadSampleError(ValueError):
    """A row cannot be used: the message names the source, the row and the field or file."""

    def __init__(self, message: str, reason: str = "row") -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# Reading tables


def read_manifest(path: str) -> list[dict]:
    """Read a CSV, JSONL/JSON-lines or Parquet manifest into a list of row dicts."""
    import pandas as pd

    if not os.path.exists(path):
        raise FileNotFoundError(f"manifest {path!r} does not exist")
    lower = path.lower()
    if lower.endswith((".csv", ".tsv")):
        # Only empty cells are missing: "NA", "None", "null" or "nan" are real text/labels, not NaN.
        frame = pd.read_csv(
            path, sep="\t" if lower.endswith(".tsv") else ",", keep_default_na=False, na_values=[""], dtype=object
        )
    elif lower.endswith((".jsonl", ".ndjson", ".json")):
        frame = pd.read_json(path, lines=not lower.endswith(".json") or _looks_like_jsonl(path), dtype=False)
    elif lower.endswith((".parquet", ".pq")):
        frame = pd.read_parquet(path)
    else:
        raise ValueError(f"manifest {path!r}: unsupported extension (use .csv, .tsv, .jsonl or .parquet)")
    return frame.to_dict("records")


def _looks_like_jsonl(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
    return first.startswith("{")


def is_missing(value: Any) -> bool:
    """True for None, NaN, empty/whitespace strings and empty lists (a modality or label not given)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return True
    return False


def _to_list(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype == object:
        return list(value)
    return value


# --------------------------------------------------------------------------------------------------
# Label vocabulary


@dataclass
class LabelVocab:
    """Label names <-> ids for single-/multi-label tasks; regression keeps `names` as target names."""

    names: list[str]
    task: str = "single_label"

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self._index = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: Any) -> bool:
        return str(name) in self._index

    def encode(self, name: Any) -> int:
        """Id of one label name."""
        return self._index[str(name)]

    @classmethod
    def from_labels(cls, labels: Sequence[Any], task: str) -> LabelVocab:
        """Vocabulary of the distinct labels, sorted numerically if all are integers, else as strings."""
        flat: set[str] = set()
        for value in labels:
            if task == "multi_label":
                flat.update(str(v) for v in value)
            else:
                flat.add(str(value))
        try:
            names = sorted(flat, key=lambda s: (0, int(s), s))
        except ValueError:
            names = sorted(flat)
        return cls(names, task)

    def save(self, path: str) -> None:
        """Write ``{"task": ..., "labels": [...]}`` as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"task": self.task, "labels": self.names}, f, indent=2)

    @classmethod
    def load(cls, path: str) -> LabelVocab:
        """Read a vocabulary written by `save`."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls(data["labels"], data.get("task", "single_label"))


# --------------------------------------------------------------------------------------------------
# Loading raw samples


def load_image(value: Any, base_dir: Optional[str]) -> Any:
    """A PIL image from a path (relative to `base_dir`), bytes dict, PIL image or uint8 array."""
    from PIL import Image

    if isinstance(value, Image.Image) or isinstance(value, np.ndarray):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            import io

            image = Image.open(io.BytesIO(value["bytes"]))
            image.load()
            return image
        value = value.get("path")
    path = resolve_path(value, base_dir)
    with Image.open(path) as image:
        image.load()
        return image.copy() if image.mode != "P" else image.convert("RGBA")


def load_audio(value: Any, base_dir: Optional[str]) -> tuple[np.ndarray, int]:
    """``(waveform float32 [T] or [C, T], sample_rate)`` from a path, a dict or a tuple."""
    import soundfile as sf

    if isinstance(value, tuple) and len(value) == 2:
        wave, sr = value
        return np.asarray(wave, dtype=np.float32), int(sr)
    if isinstance(value, dict) and value.get("array") is not None:
        return np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
    if isinstance(value, dict):
        value = value.get("path")
    data, sr = sf.read(resolve_path(value, base_dir), dtype="float32", always_2d=True)
    wave = data[:, 0] if data.shape[1] == 1 else data.T.copy()
    return wave, int(sr)


def resolve_path(value: Any, base_dir: Optional[str]) -> str:
    """Absolute path of a manifest entry (relative entries resolve against the manifest's folder)."""
    path = os.path.expanduser(str(value))
    if not os.path.isabs(path) and base_dir:
        path = os.path.join(base_dir, path)
    return path


def _check_image(value: Any, base_dir: Optional[str]) -> None:
    from PIL import Image

    if isinstance(value, (Image.Image, np.ndarray)):
        if isinstance(value, np.ndarray) and value.ndim not in (2, 3):
            raise ValueError(f"image array has shape {value.shape}; expected HxW or HxWxC")
        return
    if isinstance(value, dict) and value.get("bytes"):
        load_image(value, base_dir)
        return
    path = resolve_path(value.get("path") if isinstance(value, dict) else value, base_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file {path!r} not found")
    with Image.open(path) as image:
        image.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads the whole stream
        image.load()


def _check_audio(value: Any, base_dir: Optional[str]) -> None:
    import soundfile as sf

    if isinstance(value, (tuple, dict)) and not (isinstance(value, dict) and value.get("array") is None):
        wave, sr = load_audio(value, base_dir)
        if wave.size == 0:
            raise ValueError("audio is empty")
        if sr <= 0:
            raise ValueError(f"audio has sampling rate {sr}")
        return
    path = resolve_path(value.get("path") if isinstance(value, dict) else value, base_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio file {path!r} not found")
    info = sf.info(path)
    if info.frames <= 0:
        raise ValueError(f"audio file {path!r} is empty")
    sf.read(path, frames=min(info.frames, 1024), dtype="float32")


def _describe(value: Any, base_dir: Optional[str]) -> str:
    """' (file /abs/path)' for path-like cells, '' for in-memory samples."""
    if isinstance(value, dict):
        value = value.get("path")
    if isinstance(value, (str, os.PathLike)):
        return f" (file {resolve_path(value, base_dir)})"
    return ""


# --------------------------------------------------------------------------------------------------
# Dataset


@dataclass
class SkipCounts:
    """How many rows were skipped, by reason (e.g. ``"image": 2, "label": 1``)."""

    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """All skipped rows."""
        return sum(self.by_reason.values())

    def add(self, reason: str, message: str) -> None:
        """Count one skipped row (the first few messages are kept for the report)."""
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(message)

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"total": self.total, "by_reason": dict(self.by_reason), "examples": list(self.examples)}


class MultimodalDataset(Dataset):
    """One split: rows from a table, validated, yielding raw samples for the collate function.

    `columns` maps modality -> column; `label_column` may be None (unlabelled, e.g. retrieval).
    Items are ``{"index": i, "<modality>": raw sample or None, "label": encoded label}``.
    """

    def __init__(
        self,
        rows: Sequence[dict],
        columns: dict[str, str],
        label_column: Optional[str] = None,
        task: str = "single_label",
        vocab: Optional[LabelVocab] = None,
        base_dir: Optional[str] = None,
        source: str = "<table>",
        on_bad_sample: str = "error",
        required_modalities: Sequence[str] = (),
        multi_label_separator: str = "|",
        validate: bool = True,
        row_offset: int = 0,
        row_ids: Optional[Sequence[int]] = None,
        progress: bool = True,
    ) -> None:
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        self.rows = rows
        self.columns = dict(sorted(columns.items()))
        self.label_column = label_column if task != "contrastive" else None
        self.task = task
        self.base_dir = base_dir
        self.source = source
        self.on_bad_sample = on_bad_sample
        self.required = set(required_modalities)
        self.separator = multi_label_separator
        self.row_ids = list(row_ids) if row_ids is not None else list(range(len(rows)))
        self.skipped = SkipCounts()
        self._check_columns()
        raw_labels = [self._raw_label(i) for i in range(len(rows))] if self.has_labels else None
        if self.has_labels and vocab is None and task in ("single_label", "multi_label"):
            present_labels = [v for v in raw_labels if not is_missing(v)]
            vocab = LabelVocab.from_labels(present_labels, task)
        self.vocab = vocab
        self._labels: list[Any] = [None] * len(rows)
        self.indices: list[int] = []
        iterator: Any = range(len(rows))
        if validate and progress and len(rows) > 200:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=f"checking {os.path.basename(source)}", leave=False)
        for i in iterator:
            try:
                self._validate_row(i, raw_labels[i] if raw_labels else None, check_files=validate)
            except BadSampleError as err:
                if self.on_bad_sample == "error":
                    raise
                self.skipped.add(err.reason, str(err))
                continue
            self.indices.append(i)

    # -- helpers -------------------------------------------------------------------------------
    @property
    def has_labels(self) -> bool:
        """Whether rows carry a label/target column."""
        return self.label_column is not None

    @property
    def modalities(self) -> list[str]:
        """Modalities read from this split (sorted)."""
        return list(self.columns)

    def _check_columns(self) -> None:
        if not self.rows:
            raise ValueError(f"{self.source}: no rows")
        keys = set(self.rows[0].keys())
        wanted = dict(self.columns)
        if self.label_column is not None:
            wanted["label"] = self.label_column
        for what, column in wanted.items():
            if column not in keys:
                raise KeyError(
                    f"{self.source}: column {column!r} (for {what}) not found; columns are {sorted(keys)}"
                )

    def _where(self, i: int) -> str:
        row = self.row_ids[i] + 1
        line = f" (line {row + 1})" if self.source.lower().endswith((".csv", ".tsv")) else ""
        return f"{self.source}: row {row}{line}"

    def _bad(self, i: int, reason: str, message: str) -> BadSampleError:
        return BadSampleError(f"{self._where(i)}: {message}", reason)

    def _raw_label(self, i: int) -> Any:
        value = _to_list(self.rows[i][self.label_column])
        if self.task == "multi_label" and is_missing(value):
            return []  # an empty cell means no positive labels, as [] does in JSONL/Parquet
        if self.task == "multi_label" and isinstance(value, str):
            value = [v.strip() for v in value.split(self.separator) if v.strip()]
        return value

    def _encode_label(self, i: int, value: Any) -> Any:
        column = self.label_column
        if is_missing(value) and not (self.task == "multi_label" and isinstance(value, list)):
            raise self._bad(i, "label", f"label column {column!r} is empty")
        if self.task == "single_label":
            if value not in self.vocab:
                raise self._bad(i, "label", f"unknown label {value!r} in column {column!r} (known: {self.vocab.names})")
            return self.vocab.encode(value)
        if self.task == "multi_label":
            if not isinstance(value, (list, tuple)):
                value = [value]
            target = np.zeros(len(self.vocab), dtype=np.float32)
            for v in value:
                if v not in self.vocab:
                    raise self._bad(i, "label", f"unknown label {v!r} in column {column!r} (known: {self.vocab.names})")
                target[self.vocab.encode(v)] = 1.0
            return target
        if self.task == "regression":
            try:
                target = np.asarray(value if isinstance(value, (list, tuple)) else [value], dtype=np.float32)
            except (TypeError, ValueError):
                raise self._bad(i, "label", f"target {value!r} in column {column!r} is not a number") from None
            if not np.all(np.isfinite(target)):
                raise self._bad(i, "label", f"target {value!r} in column {column!r} is not finite")
            return target
        return None

    def _validate_row(self, i: int, raw_label: Any, check_files: bool) -> None:
        row = self.rows[i]
        present = 0
        for modality, column in self.columns.items():
            value = _to_list(row[column])
            if is_missing(value):
                if modality in self.required:
                    raise self._bad(i, modality, f"{modality} column {column!r} is empty but {modality} is required")
                continue
            present += 1
            if not check_files:
                continue
            try:
                if modality == "image":
                    _check_image(value, self.base_dir)
                elif modality == "audio":
                    _check_audio(value, self.base_dir)
                elif modality == "text" and not isinstance(value, str):
                    raise ValueError(f"text must be a string, got {type(value).__name__}")
            except Exception as err:  # noqa: BLE001 - any failure to read the file makes the row bad
                where = _describe(value, self.base_dir)
                raise self._bad(
                    i, modality, f"{modality} column {column!r}{where}: {type(err).__name__}: {err}"
                ) from err
        if present == 0:
            raise self._bad(i, "empty", f"no modality present (columns {list(self.columns.values())})")
        if self.has_labels and self.task != "contrastive":
            self._labels[i] = self._encode_label(i, raw_label)

    # -- Dataset API ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> np.ndarray:
        """Encoded labels of the kept rows, in dataset order."""
        return np.stack([np.asarray(self._labels[i]) for i in self.indices]) if self.indices else np.zeros(0)

    def __getitem__(self, idx: int) -> dict:
        i = self.indices[idx]
        row = self.rows[i]
        item: dict[str, Any] = {"index": int(idx)}
        if getattr(idx, "seed", None) is not None:
            item["aug_seed"] = idx.seed
        for modality, column in self.columns.items():
            value = _to_list(row[column])
            if is_missing(value):
                item[modality] = None
                continue
            try:
                if modality == "image":
                    item[modality] = load_image(value, self.base_dir)
                elif modality == "audio":
                    item[modality] = load_audio(value, self.base_dir)
                else:
                    item[modality] = str(value)
            except Exception as err:  # noqa: BLE001
                where = _describe(value, self.base_dir)
                raise BadSampleError(f"{self._where(i)}: {modality} column {column!r}{where}: {err}", modality) from err
        if self.has_labels and self.task != "contrastive":
            item["label"] = self._labels[i]
        return item


# --------------------------------------------------------------------------------------------------
# Collation and loading


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
def _seeded_rngs(seed_words: list[int]) -> Iterator[None]:
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

    `preprocessors` maps modality -> `Preprocessor` (from `model.get_preprocessors(train)`); absent
    samples are passed as None and flagged ``present=False``. When samples carry an ``aug_seed``
    (training loaders, see `EpochShuffleSampler`), random augmentation is seeded from (seed, epoch,
    sample indices) and the global RNGs are left untouched, so augmentation does not depend on the
    number of workers, prefetching or resuming.
    """

    def __init__(self, preprocessors: dict[str, Callable[[list], dict]], task: str = "single_label") -> None:
        self.preprocessors = dict(sorted(preprocessors.items()))
        self.task = task

    def __call__(self, samples: list[dict]) -> dict:
        batch: dict[str, Any] = {"inputs": {}, "present": {}}
        aug_seed = samples[0].get("aug_seed") if samples else None
        context = (
            _seeded_rngs([int(aug_seed)] + [int(s["index"]) for s in samples])
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
            if self.task == "single_label":
                batch["labels"] = torch.tensor(labels, dtype=torch.long)
            else:
                stacked = torch.from_numpy(np.stack(labels)).float()
                if self.task == "regression" and stacked.shape[-1] == 1:
                    stacked = stacked[:, 0]
                batch["labels"] = stacked
        batch["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
        return batch


class EpochShuffleSampler(Sampler[int]):
    """Deterministic shuffling: the order depends only on (seed, epoch), so a resumed run sees the same order.

    `set_epoch` is called by `accelerate`'s prepared loader; no global RNG is consumed. Indices are
    `SeededIndex` values carrying the epoch's augmentation seed for the `Collator`.
    """

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation for `epoch`."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        epoch_seed = self.seed * 100003 + self.epoch
        g = torch.Generator().manual_seed(epoch_seed)
        return iter([SeededIndex(i, epoch_seed) for i in torch.randperm(self.length, generator=g).tolist()])

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
) -> DataLoader:
    """A DataLoader with deterministic shuffling, persistent workers and its own seed generator."""
    sampler = EpochShuffleSampler(len(dataset), seed) if shuffle else None
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


# --------------------------------------------------------------------------------------------------
# Splits


@dataclass
class DataSplits:
    """The train/validation/test datasets of one experiment plus the label vocabulary."""

    train: MultimodalDataset
    validation: Optional[MultimodalDataset]
    test: Optional[MultimodalDataset]
    vocab: Optional[LabelVocab]

    def skip_report(self) -> dict:
        """Skip counts per split (JSON-ready)."""
        return {
            name: ds.skipped.to_dict()
            for name, ds in (("train", self.train), ("validation", self.validation), ("test", self.test))
            if ds is not None
        }


def _split_indices(
    n: int, labels: Optional[list], val_fraction: float, test_fraction: float, seed: int, stratify: bool
) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    if n - n_val - n_test < 1:
        raise ValueError(f"cannot split {n} rows with val_fraction={val_fraction}, test_fraction={test_fraction}")
    counts = Counter(map(str, labels)) if labels is not None else None
    if stratify and counts is not None and min(counts.values()) >= 2 and (n_val or n_test):
        from sklearn.model_selection import train_test_split

        str_labels = np.array([str(v) for v in labels])
        rest, test = (idx, np.array([], dtype=int))
        if n_test:
            strat = str_labels if n_test >= len(counts) else None  # too small a split to hold every class
            rest, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=strat)
        val = np.array([], dtype=int)
        if n_val:
            sub = str_labels[rest]
            sub_counts = Counter(sub)
            strat = sub if min(sub_counts.values()) >= 2 and n_val >= len(sub_counts) else None
            rest, val = train_test_split(rest, test_size=n_val, random_state=seed, stratify=strat)
        return {"train": sorted(rest.tolist()), "validation": sorted(val.tolist()), "test": sorted(test.tolist())}
    perm = rng.permutation(idx)
    return {
        "test": sorted(perm[:n_test].tolist()),
        "validation": sorted(perm[n_test : n_test + n_val].tolist()),
        "train": sorted(perm[n_test + n_val :].tolist()),
    }


def _modality_columns(cfg: Any, modalities: Sequence[str]) -> dict[str, str]:
    columns = {}
    for m in modalities:
        column = getattr(cfg, f"{m}_column", None)
        if column is None:
            raise ValueError(f"the model has a {m} encoder but data.{m}_column is null")
        columns[m] = column
    return columns


def _normalise_split_name(name: Any, source: str) -> str:
    key = SPLIT_ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"{source}: unknown split name {name!r} (use train/validation/test)")
    return key


def build_splits(
    cfg: Any,
    modalities: Sequence[str],
    task: str = "single_label",
    dataset: Any = None,
    progress: bool = True,
) -> DataSplits:
    """Build validated train/validation/test datasets from a `DataConfig` (or an in-memory `datasets` object).

    `modalities` are the model's encoder keys; `dataset` may be a `datasets.Dataset`/`DatasetDict`
    passed directly instead of ``cfg.hf_dataset``.
    """
    columns = _modality_columns(cfg, modalities)
    label_column = cfg.label_column if task != "contrastive" else None
    tables: dict[str, tuple[Sequence[dict], Optional[str], str, Optional[list[int]]]] = {}

    if cfg.demo:
        from multimodal.demo import make_demo

        manifest = make_demo(cfg.demo, n=cfg.demo_size, root=cfg.demo_dir)
        rows = read_manifest(manifest)
        base = os.path.dirname(os.path.abspath(manifest))
        grouped: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            grouped.setdefault(_normalise_split_name(r["split"], manifest), []).append(i)
        for name, ids in grouped.items():
            tables[name] = ([rows[i] for i in ids], base, manifest, ids)
    elif dataset is not None or cfg.hf_dataset:
        if dataset is None:
            import datasets as hfds

            dataset = hfds.load_from_disk(cfg.hf_dataset)
        source = cfg.hf_dataset or "<datasets>"
        wanted = [c for c in (*columns.values(), label_column, cfg.split_column) if c is not None]

        def only_needed(ds: Any) -> Any:
            # Rows of a `datasets.Dataset` decode every column (images, audio): keep just the ones used.
            keep = [c for c in dict.fromkeys(wanted) if c in getattr(ds, "column_names", [])]
            return ds.select_columns(keep) if keep and hasattr(ds, "select_columns") else ds

        if _is_dataset_dict(dataset):
            for key in dataset.keys():
                name = _normalise_split_name(key, source)
                tables[name] = (only_needed(dataset[key]), None, f"{source}[{key}]", None)
            if list(tables) == ["train"]:  # only a train split: make validation/test from it, as for one manifest
                tables["all"] = tables.pop("train")
        else:
            tables["all"] = (only_needed(dataset), None, source, None)
    else:
        if not cfg.train:
            raise ValueError("no data: set data.train (a manifest), data.hf_dataset or data.demo")
        for name in ("train", "validation", "test"):
            path = getattr(cfg, name)
            if path:
                tables[name] = (read_manifest(path), os.path.dirname(os.path.abspath(path)), path, None)
        if list(tables) == ["train"]:
            tables["all"] = tables.pop("train")

    if "all" in tables:
        rows, base, source, _ = tables.pop("all")
        if cfg.split_column:
            if cfg.split_column not in rows[0]:
                raise KeyError(f"{source}: split column {cfg.split_column!r} not found")
            grouped = {}
            for i in range(len(rows)):
                where = f"{source}: row {i + 1}, split column {cfg.split_column!r}"
                grouped.setdefault(_normalise_split_name(rows[i][cfg.split_column], where), []).append(i)
        else:
            labels = None
            if task == "single_label" and label_column is not None:
                labels = [rows[i][label_column] for i in range(len(rows))]
            grouped = _split_indices(
                len(rows), labels, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.stratify
            )
        for name, ids in grouped.items():
            if ids:
                tables[name] = (_Subset(rows, ids), base, source, ids)

    if "train" not in tables:
        raise ValueError("no training split found (give data.train, a 'train' split or a single table to split)")

    def make(name: str, vocab: Optional[LabelVocab]) -> MultimodalDataset:
        rows, base, source, ids = tables[name]
        limit = cfg.max_train_samples if name == "train" else None
        if limit is not None and len(rows) > limit:
            # A seeded random subset, not the first rows (a manifest sorted by class would lose classes).
            keep = sorted(np.random.default_rng(cfg.split_seed).choice(len(rows), limit, replace=False).tolist())
            ids = [ids[k] for k in keep] if ids is not None else keep
            rows = _Subset(rows, keep)
        return MultimodalDataset(
            rows,
            columns,
            label_column=label_column,
            task=task,
            vocab=vocab,
            base_dir=base,
            source=source,
            on_bad_sample=cfg.on_bad_sample,
            required_modalities=cfg.required_modalities,
            multi_label_separator=cfg.multi_label_separator,
            validate=cfg.validate,
            row_ids=ids,
            progress=progress,
        )

    fixed = LabelVocab(cfg.labels, task) if cfg.labels else None
    train = make("train", fixed)
    vocab = train.vocab
    validation = make("validation", vocab) if "validation" in tables else None
    test = make("test", vocab) if "test" in tables else None
    if len(train) == 0:
        raise ValueError(f"training split is empty after validation (skipped: {train.skipped.to_dict()})")
    return DataSplits(train, validation, test, vocab)


def _is_dataset_dict(obj: Any) -> bool:
    try:
        import datasets as hfds

        return isinstance(obj, (hfds.DatasetDict, dict))
    except ImportError:  # pragma: no cover
        return isinstance(obj, dict)


class _Subset(Sequence):
    """Row view of a table (list or `datasets.Dataset`) restricted to some row ids."""

    def __init__(self, rows: Union[Sequence[dict], Any], ids: list[int]) -> None:
        self.rows, self.ids = rows, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        return self.rows[self.ids[i]]
